// SPDX-License-Identifier: GPL-2.0
/*
 * mvm_notify: host file changes as real file events in an mvm guest.
 *
 * virtio-fs has no way for the host to tell the guest that a shared file changed: the
 * guest's caches keep the old entry for up to their timeout and no inotify or fanotify
 * watcher in the guest hears of it. mvm's supervisor watches the project on the host and
 * its guest agent writes each change here, on /dev/mvm-notify. For each one this module
 * drops what the guest cached of that name (dentry, attributes, page cache) so the next
 * read sees the host's file, and raises the event the change would have raised had it
 * been made in the guest: the real fsnotify call, so inotify, fanotify and every library
 * over them see it. Nothing is written to any file system: no copy-up, no changed times.
 *
 * A write holds whole records:
 *
 *   'P' 'd' PATH '\0'            the project root (absolute); the others are relative to it
 *   'L' 'd' PATH '\0'            in overlay mode, the overlay's lower layer (absolute)
 *   KIND TYPE PATH '\0'          N(ew), D(elete), M(odify), W(rite closed), A(ttributes),
 *                                X (drop every cached entry beneath PATH)
 *   'R' TYPE FROM '\0' TO '\0'   a rename within the project
 *
 * TYPE is 'f' (not a directory) or 'd' (a directory). Paths are walked beneath the root
 * with no symlink followed. What the guest did itself to the project (its own writes
 * through a read-write share, which the host then reports back) is remembered for a
 * second, and a report of the same change in that time raises no second event.
 */

#include <linux/module.h>
#include <linux/miscdevice.h>
#include <linux/fs.h>
#include <linux/namei.h>
#include <linux/dcache.h>
#include <linux/fsnotify.h>
#include <linux/fsnotify_backend.h>
#include <linux/slab.h>
#include <linux/mutex.h>
#include <linux/spinlock.h>
#include <linux/uaccess.h>
#include <linux/jiffies.h>
#include <linux/stringhash.h>
#include <linux/pagemap.h>

/* Exported by fs/namei.c, declared only in fs/internal.h. */
extern int vfs_path_lookup(struct dentry *dentry, struct vfsmount *mnt, const char *name,
			   unsigned int flags, struct path *path);

#define MAX_WRITE (256 * 1024)
#define ECHO_SLOTS 512
#define ECHO_WINDOW HZ

static DEFINE_MUTEX(delivery_lock);
/* The task delivering host changes: its own events are not the guest's. */
static struct task_struct *delivering;

/* ---- the guest's own recent changes (echo suppression) ---- */

struct echo {
	u64 key;
	u32 mask;
	unsigned long when;
};

static DEFINE_SPINLOCK(echo_lock);
static struct echo echoes[ECHO_SLOTS];
static unsigned int echo_next;
static struct fsnotify_group *echo_group;
static struct fsnotify_mark *echo_mark;

#define CONTENT_MASK (FS_MODIFY | FS_CLOSE_WRITE)
#define NAME_MASK (FS_CREATE | FS_DELETE | FS_MOVED_FROM | FS_MOVED_TO)

static u64 inode_key(const struct inode *inode)
{
	return ((u64)inode->i_ino << 1) | 1;
}

static u64 name_key(const struct inode *dir, const struct qstr *name)
{
	return ((u64)dir->i_ino << 32) ^ ((u64)full_name_hash(NULL, name->name, name->len) << 1);
}

static void echo_remember(u64 key, u32 mask)
{
	unsigned long flags;

	spin_lock_irqsave(&echo_lock, flags);
	echoes[echo_next] = (struct echo){ .key = key, .mask = mask, .when = jiffies };
	echo_next = (echo_next + 1) % ECHO_SLOTS;
	spin_unlock_irqrestore(&echo_lock, flags);
}

/* Whether the guest itself made a change like `mask` to `key` within the window. */
static bool echo_of_guest(u64 key, u32 mask)
{
	unsigned long flags;
	bool found = false;
	unsigned int i;

	spin_lock_irqsave(&echo_lock, flags);
	for (i = 0; i < ECHO_SLOTS && !found; i++)
		found = echoes[i].key == key && (echoes[i].mask & mask) &&
			time_before(jiffies, echoes[i].when + ECHO_WINDOW);
	spin_unlock_irqrestore(&echo_lock, flags);
	return found;
}

static int echo_handle(struct fsnotify_group *group, u32 mask, const void *data, int data_type,
		       struct inode *dir, const struct qstr *name, u32 cookie,
		       struct fsnotify_iter_info *iter_info)
{
	struct inode *inode;

	if (READ_ONCE(delivering) == current)
		return 0;
	if (dir && name && (mask & NAME_MASK)) {
		echo_remember(name_key(dir, name), mask & NAME_MASK);
		return 0;
	}
	inode = fsnotify_data_inode(data, data_type);
	if (inode && (mask & (CONTENT_MASK | FS_ATTRIB)))
		echo_remember(inode_key(inode), mask & (CONTENT_MASK | FS_ATTRIB));
	return 0;
}

static void echo_free_mark(struct fsnotify_mark *mark)
{
	kfree(mark);
}

static const struct fsnotify_ops echo_ops = {
	.handle_event = echo_handle,
	.free_mark = echo_free_mark,
};

/* Listens to every change on the project's file system (once). */
static void echo_watch(struct super_block *sb)
{
	struct fsnotify_mark *mark;

	if (echo_mark || !echo_group)
		return;
	mark = kzalloc(sizeof(*mark), GFP_KERNEL);
	if (!mark)
		return;
	fsnotify_init_mark(mark, echo_group);
	mark->mask = CONTENT_MASK | FS_ATTRIB | NAME_MASK;
	if (fsnotify_add_mark(mark, &sb->s_fsnotify_marks, FSNOTIFY_OBJ_TYPE_SB, 0, NULL)) {
		fsnotify_put_mark(mark);
		return;
	}
	echo_mark = mark;
}

/* ---- applying one change ---- */

/*
 * A tree the changes are applied to. The project as the guest sees it raises events; in
 * overlay mode the overlay's lower layer (the host's project, a virtio-fs mount of its
 * own) is applied to first, only to drop what it cached, so the overlay's fresh lookups
 * reach the host's files.
 */
struct tree {
	struct path root;
	bool set;
	bool raise;
};

static struct tree lower_tree = { .raise = false };
static struct tree project_tree = { .raise = true };

/*
 * The directory whose attributes were last refreshed in this write, per tree: a burst of
 * changes in one directory (a checkout) asks the host for its attributes once.
 */
static struct dentry *refreshed_dir[2];

/*
 * Makes the attributes of `dentry` fresh: asks the host for them. In overlay mode the
 * overlay's attributes are those of the lower layer, which its own pass just refreshed.
 */
static void refresh_attributes(const struct tree *tree, struct dentry *dentry)
{
	struct path path = { .mnt = tree->root.mnt, .dentry = dentry };
	struct kstat stat;
	bool overlay_over_lower = tree->raise && lower_tree.set;

	vfs_getattr(&path, &stat, STATX_BASIC_STATS, overlay_over_lower ? AT_STATX_SYNC_AS_STAT : AT_STATX_FORCE_SYNC);
}

/* As refresh_attributes, for a directory holding a change: once per write. */
static void refresh_dir(const struct tree *tree, struct dentry *dir)
{
	struct dentry **last = &refreshed_dir[tree->raise ? 1 : 0];

	if (*last == dir)
		return;
	*last = dir;
	refresh_attributes(tree, dir);
}

/* Forgets the cached entry `name` in `parent` (unless something is mounted on it). */
static struct dentry *forget_entry(struct dentry *parent, const char *name)
{
	struct qstr q = QSTR_INIT(name, strlen(name));
	struct dentry *cached = d_hash_and_lookup(parent, &q);

	if (IS_ERR_OR_NULL(cached))
		return NULL;
	if (!d_mountpoint(cached))
		d_invalidate(cached);
	return cached;
}

/* The directory holding `path` (relative to the root), and where its last name starts. */
static int parent_of(const struct tree *tree, const char *path, struct path *parent,
		     const char **name)
{
	const char *slash = strrchr(path, '/');
	char *dir;
	int err;

	if (!slash) {
		*name = path;
		*parent = tree->root;
		path_get(parent);
		return 0;
	}
	*name = slash + 1;
	dir = kstrndup(path, slash - path, GFP_KERNEL);
	if (!dir)
		return -ENOMEM;
	err = vfs_path_lookup(tree->root.dentry, tree->root.mnt, dir,
			      LOOKUP_DIRECTORY | LOOKUP_BENEATH | LOOKUP_NO_SYMLINKS, parent);
	kfree(dir);
	return err;
}

static bool valid_name(const char *name)
{
	return *name && strcmp(name, ".") && strcmp(name, "..") && strlen(name) <= NAME_MAX;
}

/* The entry `name` in `parent`, looked up afresh; NULL when it does not exist. */
static struct dentry *look_up(struct dentry *parent, const char *name)
{
	struct dentry *child = lookup_one_unlocked(&init_user_ns, name, parent, strlen(name));

	if (IS_ERR(child))
		return NULL;
	if (d_really_is_negative(child)) {
		dput(child);
		return NULL;
	}
	return child;
}

static void apply_created(const struct tree *tree, struct path *parent, const char *name,
			  bool is_dir)
{
	struct inode *dir = d_inode(parent->dentry);
	struct dentry *stale = forget_entry(parent->dentry, name);
	struct dentry *child;
	struct qstr q = QSTR_INIT(name, strlen(name));

	dput(stale);
	refresh_dir(tree, parent->dentry);
	if (!tree->raise)
		return;
	child = look_up(parent->dentry, name);
	if (!child) {
		/* Gone again already (a temporary file): its name is all there is to tell. */
		if (!echo_of_guest(name_key(dir, &q), FS_CREATE | FS_MOVED_TO))
			fsnotify_name(FS_CREATE | (is_dir ? FS_ISDIR : 0), dir, FSNOTIFY_EVENT_INODE, dir, &q, 0);
		return;
	}
	if (!echo_of_guest(name_key(dir, &child->d_name), FS_CREATE | FS_MOVED_TO)) {
		if (d_is_dir(child))
			fsnotify_mkdir(dir, child);
		else
			fsnotify_create(dir, child);
	}
	dput(child);
}

static void apply_deleted(const struct tree *tree, struct path *parent, const char *name,
			  bool is_dir)
{
	struct inode *dir = d_inode(parent->dentry);
	struct qstr q = QSTR_INIT(name, strlen(name));
	struct dentry *gone = forget_entry(parent->dentry, name);
	struct inode *inode = gone && d_really_is_positive(gone) ? igrab(d_inode(gone)) : NULL;
	struct dentry *again;
	u32 mask = FS_DELETE | (is_dir ? FS_ISDIR : 0);

	refresh_dir(tree, parent->dentry);
	if (!tree->raise)
		goto out;
	again = look_up(parent->dentry, name);
	if (again) {
		/* Made again before this was applied: the guest sees the new one. */
		dput(again);
		goto out;
	}
	if (!echo_of_guest(name_key(dir, &q), FS_DELETE | FS_MOVED_FROM)) {
		fsnotify_name(mask, inode ? (void *)inode : (void *)dir, FSNOTIFY_EVENT_INODE, dir, &q, 0);
		if (inode) {
			refresh_attributes(tree, gone);
			if (inode->i_nlink == 0)
				fsnotify_inoderemove(inode);
		}
	}
out:
	iput(inode);
	dput(gone);
}

static void apply_changed(const struct tree *tree, struct path *parent, const char *name, char kind)
{
	struct dentry *stale;
	struct dentry *child;
	struct inode *inode;
	u32 mask = kind == 'A' ? FS_ATTRIB : kind == 'W' ? FS_CLOSE_WRITE : FS_MODIFY;
	struct qstr q = QSTR_INIT(name, strlen(name));

	/* A cached "no such file" would hide it. */
	stale = d_hash_and_lookup(parent->dentry, &q);
	if (!IS_ERR_OR_NULL(stale) && d_really_is_negative(stale))
		d_invalidate(stale);
	if (!IS_ERR_OR_NULL(stale))
		dput(stale);
	child = look_up(parent->dentry, name);
	if (!child)
		return;
	inode = d_inode(child);
	refresh_attributes(tree, child);
	if (kind != 'A' && S_ISREG(inode->i_mode))
		invalidate_inode_pages2(inode->i_mapping);
	if (tree->raise && !echo_of_guest(inode_key(inode), kind == 'A' ? FS_ATTRIB : CONTENT_MASK))
		fsnotify_dentry(child, mask);
	dput(child);
}

static void apply_renamed(const struct tree *tree, const char *from, const char *to, bool is_dir)
{
	struct path old_parent, new_parent;
	const char *old_name, *new_name;
	struct dentry *old_entry, *target_entry, *moved;
	struct inode *target = NULL;
	struct qstr old_q;
	char *old_copy;

	if (parent_of(tree, from, &old_parent, &old_name))
		return;
	if (!valid_name(old_name) || parent_of(tree, to, &new_parent, &new_name)) {
		path_put(&old_parent);
		return;
	}
	old_copy = kstrdup(old_name, GFP_KERNEL);
	if (!old_copy || !valid_name(new_name))
		goto out;
	old_q = (struct qstr)QSTR_INIT(old_copy, strlen(old_copy));
	old_entry = forget_entry(old_parent.dentry, old_name);
	target_entry = forget_entry(new_parent.dentry, new_name);
	if (target_entry && d_really_is_positive(target_entry))
		target = igrab(d_inode(target_entry));
	refresh_dir(tree, old_parent.dentry);
	refresh_attributes(tree, new_parent.dentry);
	moved = tree->raise ? look_up(new_parent.dentry, new_name) : NULL;
	if (!tree->raise) {
		/* Only the caches: done. */
	} else if (!moved) {
		/* Gone again already: what the guest can still see is the deletion. */
		apply_deleted(tree, &old_parent, old_name, is_dir);
	} else {
		if (target == d_inode(moved)) {
			iput(target);
			target = NULL;
		}
		if (!echo_of_guest(name_key(d_inode(old_parent.dentry), &old_q), FS_MOVED_FROM))
			fsnotify_move(d_inode(old_parent.dentry), d_inode(new_parent.dentry), &old_q,
				      d_is_dir(moved), target, moved);
		dput(moved);
	}
	iput(target);
	dput(target_entry);
	dput(old_entry);
out:
	kfree(old_copy);
	path_put(&new_parent);
	path_put(&old_parent);
}

static void apply_to(const struct tree *tree, char kind, char type, const char *path, const char *to)
{
	struct path parent;
	const char *name;
	bool is_dir = type == 'd';

	if (kind == 'R') {
		apply_renamed(tree, path, to, is_dir);
		return;
	}
	if (kind == 'X') {
		struct path under;

		if (!*path) {
			shrink_dcache_parent(tree->root.dentry);
			return;
		}
		if (!vfs_path_lookup(tree->root.dentry, tree->root.mnt, path,
				     LOOKUP_DIRECTORY | LOOKUP_BENEATH | LOOKUP_NO_SYMLINKS, &under)) {
			shrink_dcache_parent(under.dentry);
			path_put(&under);
		}
		return;
	}
	if (parent_of(tree, path, &parent, &name))
		return;
	if (valid_name(name)) {
		switch (kind) {
		case 'N':
			apply_created(tree, &parent, name, is_dir);
			break;
		case 'D':
			apply_deleted(tree, &parent, name, is_dir);
			break;
		case 'M':
		case 'W':
		case 'A':
			apply_changed(tree, &parent, name, kind);
			break;
		}
	}
	path_put(&parent);
}

static void apply_one(char kind, char type, const char *path, const char *to)
{
	if (lower_tree.set)
		apply_to(&lower_tree, kind, type, path, to);
	apply_to(&project_tree, kind, type, path, to);
}

static int set_root(struct tree *tree, const char *path)
{
	struct path root;
	int err = kern_path(path, LOOKUP_DIRECTORY | LOOKUP_FOLLOW, &root);

	if (err)
		return err;
	if (tree->set)
		path_put(&tree->root);
	tree->root = root;
	tree->set = true;
	if (tree->raise)
		echo_watch(root.dentry->d_sb);
	return 0;
}

/* Applies the records in buf[0..len); returns how many bytes were whole records. */
static ssize_t apply_records(char *buf, size_t len)
{
	size_t at = 0;

	while (at + 3 <= len) {
		char kind = buf[at], type = buf[at + 1];
		char *path = buf + at + 2, *end, *to = NULL;

		end = memchr(path, '\0', len - (at + 2));
		if (!end)
			break;
		if (kind == 'R') {
			to = end + 1;
			end = memchr(to, '\0', len - (to - buf));
			if (!end)
				break;
		}
		at = end - buf + 1;
		if (type != 'f' && type != 'd')
			return -EINVAL;
		if (kind == 'P' || kind == 'L') {
			int err = set_root(kind == 'P' ? &project_tree : &lower_tree, path);

			if (err)
				return err;
		} else if (project_tree.set && *path != '/') {
			apply_one(kind, type, path, to);
		}
	}
	return at;
}

static ssize_t notify_write(struct file *file, const char __user *data, size_t len, loff_t *pos)
{
	char *buf;
	ssize_t done;

	if (len == 0)
		return 0;
	if (len > MAX_WRITE)
		return -EMSGSIZE;
	buf = vmemdup_user(data, len);
	if (IS_ERR(buf))
		return PTR_ERR(buf);
	mutex_lock(&delivery_lock);
	WRITE_ONCE(delivering, current);
	refreshed_dir[0] = refreshed_dir[1] = NULL;
	done = apply_records(buf, len);
	WRITE_ONCE(delivering, NULL);
	mutex_unlock(&delivery_lock);
	kvfree(buf);
	if (done >= 0 && done != len)
		return -EINVAL;
	return done;
}

static const struct file_operations notify_fops = {
	.owner = THIS_MODULE,
	.write = notify_write,
	.llseek = noop_llseek,
};

static struct miscdevice notify_device = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "mvm-notify",
	.fops = &notify_fops,
	.mode = 0600,
};

static int __init mvm_notify_init(void)
{
	echo_group = fsnotify_alloc_group(&echo_ops, 0);
	if (IS_ERR(echo_group))
		echo_group = NULL;
	return misc_register(&notify_device);
}

/* No exit: the module stays for the guest's life (its marks and root with it). */
module_init(mvm_notify_init);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("mvm");
MODULE_DESCRIPTION("Host file changes as file events in an mvm guest");
