//! Unit tier, through the real binary: `mvm create` with good and bad input. Every bad
//! input gets a clear error, its documented exit code, and leaves nothing on disk.

mod support;

use support::Sandbox;

const USAGE: i32 = 2;
const NOT_FOUND: i32 = 3;
const CONFLICT: i32 = 4;

#[test]
fn creates_a_vm_and_lists_it() {
    let sandbox = Sandbox::new();
    let project = sandbox.mkdir("web");
    let out = sandbox.mvm(&["create", "web", "--project", project.to_str().unwrap(), "--port", "8080:3000"]);
    assert!(out.ok().contains("created VM 'web'"), "{}", out.stdout);
    let list = sandbox.list_json();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["name"], "web");
    assert_eq!(list[0]["state"], "stopped");
    assert_eq!(list[0]["ip"], "10.200.0.2");
    assert_eq!(list[0]["ports"][0]["host"], 8080);
    assert_eq!(list[0]["project"], project.canonicalize().unwrap().to_str().unwrap());
    let toml = std::fs::read_to_string(sandbox.state_dir().join("web/vm.toml")).unwrap();
    assert!(toml.contains("name = \"web\""), "{toml}");
}

#[track_caller]
fn assert_refused(sandbox: &Sandbox, args: &[&str], code: i32, needles: &[&str]) {
    let before = sandbox.state_entries();
    let out = sandbox.mvm(args);
    out.fails(code, needles);
    assert!(out.stderr.starts_with("error: "), "{}", out.stderr);
    let after: Vec<String> = sandbox.state_entries().into_iter().filter(|e| e != ".create.lock").collect();
    let before: Vec<String> = before.into_iter().filter(|e| e != ".create.lock").collect();
    assert_eq!(before, after, "a refused create changed the state dir: {args:?}");
}

#[test]
fn refuses_invalid_names() {
    let sandbox = Sandbox::new();
    let long = "a".repeat(33);
    for (name, why) in [
        ("", "is empty"),
        (long.as_str(), "the limit is 32"),
        ("a/b", "contains '/'"),
        ("my vm", "contains ' '"),
        ("web.app", "contains '.'"),
        ("Web", "contains 'W'"),
    ] {
        assert_refused(&sandbox, &["create", name], USAGE, &[why, "hint: use 1-32 lowercase"]);
    }
    assert!(sandbox.vm_dirs().is_empty());
}

#[test]
fn refuses_a_duplicate_name_and_keeps_the_first() {
    let sandbox = Sandbox::new();
    sandbox.mvm(&["create", "web", "--cpus", "1"]).ok();
    let before = std::fs::read(sandbox.state_dir().join("web/vm.toml")).unwrap();
    assert_refused(&sandbox, &["create", "web", "--cpus", "2"], CONFLICT, &["already exists", "mvm rm web"]);
    assert_eq!(std::fs::read(sandbox.state_dir().join("web/vm.toml")).unwrap(), before);
}

#[test]
fn refuses_bad_projects() {
    let sandbox = Sandbox::new();
    let missing = sandbox.root().join("missing");
    assert_refused(
        &sandbox,
        &["create", "web", "--project", missing.to_str().unwrap()],
        NOT_FOUND,
        &["does not exist"],
    );
    let file = sandbox.root().join("file.txt");
    std::fs::write(&file, "x").unwrap();
    assert_refused(
        &sandbox,
        &["create", "web", "--project", file.to_str().unwrap()],
        USAGE,
        &["not a directory"],
    );
    let project = sandbox.mkdir("p");
    assert_refused(
        &sandbox,
        &["create", "web", "--project", project.to_str().unwrap(), "--mount", "rw", "--persist"],
        USAGE,
        &["--persist keeps the overlay's layer"],
    );
    assert_refused(&sandbox, &["create", "web", "--persist"], USAGE, &["--project"]);
}

#[test]
fn refuses_bad_cpus_and_memory() {
    let sandbox = Sandbox::new();
    let too_many = (std::thread::available_parallelism().unwrap().get() + 1).to_string();
    assert_refused(&sandbox, &["create", "web", "--cpus", "0"], USAGE, &["--cpus 0 is outside"]);
    assert_refused(
        &sandbox,
        &["create", "web", "--cpus", &too_many],
        USAGE,
        &["is outside", "this host has"],
    );
    assert_refused(&sandbox, &["create", "web", "--cpus", "two"], USAGE, &["invalid value 'two'"]);
    for memory in ["lots", "1.5G", "12X", ""] {
        assert_refused(&sandbox, &["create", "web", "--memory", memory], USAGE, &["invalid memory size"]);
    }
    assert_refused(&sandbox, &["create", "web", "--memory", "64M"], USAGE, &["below the minimum of 128 MiB"]);
    assert_refused(&sandbox, &["create", "web", "--memory", "100T"], USAGE, &["more than this host's"]);
}

#[test]
fn refuses_bad_ports() {
    let sandbox = Sandbox::new();
    for (port, why) in [
        ("65536:80", "outside 1-65535"),
        ("80:0", "outside 1-65535"),
        ("80:70000", "outside 1-65535"),
        ("8080", "expected HOST:GUEST"),
        ("a:b", "not a number"),
        ("80:80/icmp", "unknown protocol"),
    ] {
        assert_refused(&sandbox, &["create", "web", "--port", port], USAGE, &[why, "hint: write HOST:GUEST"]);
    }
    assert_refused(
        &sandbox,
        &["create", "web", "--port", "8080:80", "--port", "8080:81"],
        USAGE,
        &["given twice"],
    );
}

#[test]
fn host_port_zero_takes_the_guest_port_when_free_else_another() {
    let sandbox = Sandbox::new();
    sandbox.mvm(&["create", "a", "--port", "0:48123"]).ok();
    sandbox.mvm(&["create", "b", "--port", "0:48123"]).ok();
    let host_port = |name: &str| {
        let ports: serde_json::Value =
            serde_json::from_str(sandbox.mvm(&["port", name, "--json"]).ok()).unwrap();
        ports[0]["host"].as_u64().unwrap()
    };
    assert_eq!(host_port("a"), 48123);
    assert_ne!(host_port("b"), 48123);
    assert_ne!(host_port("b"), 0);
}

#[test]
fn refuses_a_host_port_another_vm_forwards() {
    let sandbox = Sandbox::new();
    sandbox.mvm(&["create", "web", "--port", "8080:80"]).ok();
    assert_refused(
        &sandbox,
        &["create", "api", "--port", "8080:3000"],
        CONFLICT,
        &["already forwarded by VM 'web'", "mvm port web --rm 8080"],
    );
    sandbox.mvm(&["create", "dns", "--port", "8080:80/udp"]).ok();
}

#[test]
fn refuses_bad_volumes_env_root_and_kernel() {
    let sandbox = Sandbox::new();
    for volume in ["../x:/data", "a/b:/data", "data:relative", "data:/", "data"] {
        assert_refused(&sandbox, &["create", "web", "--volume", volume], USAGE, &["invalid volume"]);
    }
    assert_refused(&sandbox, &["create", "web", "--env", "1X=y"], USAGE, &["invalid environment variable"]);
    assert_refused(&sandbox, &["create", "web", "--root", "relative"], USAGE, &["neither 'host'"]);
    assert_refused(
        &sandbox,
        &["create", "web", "--root", "/nonexistent-root"],
        NOT_FOUND,
        &["does not exist"],
    );
    assert_refused(
        &sandbox,
        &["create", "web", "--kernel", "/nonexistent/bzImage"],
        NOT_FOUND,
        &["not a file"],
    );
    assert_refused(&sandbox, &["create", "web", "--hypervisor", "firecracker"], USAGE, &["invalid value"]);
}

#[test]
fn refuses_unknown_flags_and_missing_arguments() {
    let sandbox = Sandbox::new();
    assert_refused(&sandbox, &["create", "web", "--gpu"], USAGE, &["unexpected argument '--gpu'"]);
    assert_refused(&sandbox, &["create"], USAGE, &["required"]);
    sandbox.mvm(&["frobnicate"]).fails(USAGE, &["unrecognized subcommand"]);
}

#[test]
fn a_corrupt_host_config_is_refused_clearly() {
    let sandbox = Sandbox::new();
    std::fs::write(sandbox.config_file(), "[network]\npool = \"10.0.0.1/8\"\n").unwrap();
    assert_refused(&sandbox, &["create", "web"], USAGE, &["invalid host config", "host bits"]);
}

#[test]
fn twenty_concurrent_creates_get_twenty_distinct_indices() {
    let sandbox = Sandbox::new();
    let children: Vec<_> = (0..20)
        .map(|i| {
            let mut command = sandbox.command(&["create", &format!("vm{i}"), "--cpus", "1"]);
            command.stdout(std::process::Stdio::null()).spawn().unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let list = sandbox.list_json();
    assert_eq!(list.len(), 20);
    let mut ips: Vec<&str> = list.iter().map(|vm| vm["ip"].as_str().unwrap()).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 20, "duplicate addresses: {list:?}");
    let mut indices: Vec<u64> = (0..20)
        .map(|i| {
            let text = std::fs::read_to_string(sandbox.state_dir().join(format!("vm{i}/vm.toml"))).unwrap();
            let value: toml::Value = toml::from_str(&text).unwrap();
            value["network"]["index"].as_integer().unwrap() as u64
        })
        .collect();
    indices.sort();
    assert_eq!(indices, (0..20).collect::<Vec<u64>>());
}

#[test]
fn a_create_killed_half_way_leaves_no_vm() {
    let sandbox = Sandbox::new();
    let mut command = sandbox.command(&["create", "web"]);
    command.env("MVM_FAILPOINT", "create-staged");
    let status = command.output().unwrap().status;
    assert!(!status.success(), "the failpoint should have killed create");
    assert!(sandbox.vm_dirs().is_empty());
    assert!(sandbox.list_json().is_empty(), "a half-created VM must not be listed");
    sandbox.mvm(&["create", "web"]).ok();
    assert_eq!(sandbox.vm_dirs(), ["web"]);
    assert!(
        !sandbox.state_entries().iter().any(|e| e.starts_with(".staging-")),
        "stale staging dir left: {:?}",
        sandbox.state_entries()
    );
}

#[test]
fn unprivileged_users_get_needs_root_or_unreadable_errors() {
    if !support::require_root("unprivileged_users_get_needs_root_or_unreadable_errors") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let sandbox = Sandbox::new();
    std::fs::set_permissions(sandbox.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // A state dir under a root-owned directory: creating it is refused.
    sandbox.mvm_as(65534, &["create", "web"]).fails(6, &["permission denied", "sudo"]);
    // An unreadable project, with a state dir the user may write.
    std::fs::create_dir_all(sandbox.state_dir()).unwrap();
    std::fs::set_permissions(sandbox.state_dir(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let secret = sandbox.mkdir("secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o700)).unwrap();
    sandbox
        .mvm_as(65534, &["create", "web", "--project", secret.to_str().unwrap()])
        .fails(USAGE, &["not readable"]);
    assert!(sandbox.vm_dirs().is_empty());
}

#[test]
fn templates_are_listed_shown_and_checked() {
    let sandbox = Sandbox::new();
    let listed = sandbox.mvm(&["templates"]).ok().to_string();
    for name in ["node", "django", "postgres", "django-postgres"] {
        assert!(listed.lines().any(|line| line.starts_with(name)), "{listed}");
    }
    let json: Vec<serde_json::Value> =
        serde_json::from_str(sandbox.mvm(&["templates", "--json"]).ok()).unwrap();
    let postgres = json.iter().find(|t| t["name"] == "postgres").unwrap();
    assert_eq!(postgres["ports"], serde_json::json!(["5432"]));
    assert_eq!(postgres["volumes"], serde_json::json!(["pgdata:/var/lib/mvm/postgresql"]));
    assert!(sandbox.mvm(&["templates", "node"]).ok().contains("exec npm start"));
    sandbox.mvm(&["templates", "rails"]).fails(3, &["there is no template \"rails\"", "known templates: "]);
    sandbox.mvm(&["create", "web", "--template", "rails"]).fails(3, &["there is no template"]);
    assert!(sandbox.vm_dirs().is_empty());

    let made = sandbox.mvm(&["create", "db", "--template", "postgres", "--memory", "2G"]).ok().to_string();
    assert!(made.contains("2G memory") && made.contains("→ guest port 5432"), "{made}");
    assert!(made.contains("runs process 'postgres'"), "{made}");
    let inspect: serde_json::Value =
        serde_json::from_str(sandbox.mvm(&["inspect", "db", "--json"]).ok()).unwrap();
    assert_eq!(inspect["config"]["env"]["PGUSER"], "postgres");
    assert_eq!(inspect["config"]["volumes"][0]["name"], "pgdata");
    // Its software is a package layer, named by what it holds; --package adds to it.
    assert_eq!(postgres["packages"], serde_json::json!(["postgresql"]));
    assert_eq!(inspect["config"]["packages"], serde_json::json!(["postgresql"]));
    let layer = &inspect["package_layer"];
    assert!(layer["image"].as_str().unwrap().starts_with("pkg-"), "{layer}");
    assert_eq!(layer["built"], false);
    sandbox.mvm(&["create", "db2", "--template", "postgres", "--package", "curl,postgresql"]).ok();
    let second: serde_json::Value =
        serde_json::from_str(sandbox.mvm(&["inspect", "db2", "--json"]).ok()).unwrap();
    assert_eq!(second["config"]["packages"], serde_json::json!(["curl", "postgresql"]));
    assert_ne!(second["package_layer"]["image"], layer["image"]);
    sandbox.mvm(&["create", "bad", "--package=--hook-dir=/tmp"]).fails(2, &["not a Debian package name"]);
    sandbox.mvm(&["create", "bad", "--package", "curl", "--root", "/tmp"]).fails(2, &["not --root DIR"]);
    // A pkg- name builds only with the packages it stands for.
    let forged = ["image", "build", layer["image"].as_str().unwrap(), "--include", "curl"];
    sandbox.mvm(&forged).fails(2, &["is the name of a package layer"]);
}

/// Through sudo, paths on the command line are opened with the invoking user's rights:
/// root's own files cannot become a VM's project, kernel or template, and a parse error
/// never quotes a file the user could not read.
#[test]
fn through_sudo_paths_are_opened_with_the_users_rights() {
    if !support::require_root("through_sudo_paths_are_opened_with_the_users_rights") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let sandbox = Sandbox::new();
    std::fs::set_permissions(sandbox.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = |args: &[&str]| {
        let output = sandbox
            .command(args)
            .env("SUDO_UID", "65534")
            .env("SUDO_GID", "65534")
            .env("SUDO_USER", "nobody")
            .output()
            .unwrap();
        support::Run::from_output(output)
    };
    let private = sandbox.mkdir("private");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let p = private.to_str().unwrap();
    as_nobody(&["create", "a", "--project", p]).fails(USAGE, &["not readable"]);
    let readonly = sandbox.mkdir("readonly");
    std::fs::set_permissions(&readonly, std::fs::Permissions::from_mode(0o755)).unwrap();
    let r = readonly.to_str().unwrap();
    as_nobody(&["create", "b", "--project", r, "--mount", "rw"])
        .fails(USAGE, &["not writable", "--mount overlay"]);
    let secret_toml = sandbox.root().join("secret.toml");
    std::fs::write(&secret_toml, "password = TOPSECRET-LINE\n").unwrap();
    std::fs::set_permissions(&secret_toml, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = as_nobody(&["create", "c", "--template", secret_toml.to_str().unwrap()]);
    out.fails(NOT_FOUND, &["cannot read template file", "Permission denied"]);
    assert!(!out.stderr.contains("TOPSECRET"), "{}", out.stderr);
    let kernel = sandbox.root().join("vmlinuz");
    std::fs::write(&kernel, "kernel").unwrap();
    std::fs::set_permissions(&kernel, std::fs::Permissions::from_mode(0o600)).unwrap();
    as_nobody(&["create", "d", "--kernel", kernel.to_str().unwrap()]).fails(NOT_FOUND, &["cannot be read"]);
    assert!(sandbox.vm_dirs().is_empty());
    // Guest root would read all of `/` as host root: through sudo, only one's own directory.
    as_nobody(&["create", "g", "--project", "/"]).fails(USAGE, &["belongs to uid 0", "your own directories"]);
    as_nobody(&["create", "h", "--project", r]).fails(USAGE, &["belongs to uid 0"]);
    assert!(sandbox.vm_dirs().is_empty());
    // Root itself (no SUDO_UID) may use all of them, and so may the user their own.
    sandbox.mvm(&["create", "e", "--project", p, "--kernel", kernel.to_str().unwrap()]).ok();
    let mine = sandbox.mkdir("mine");
    std::os::unix::fs::chown(&mine, Some(65534), Some(65534)).unwrap();
    as_nobody(&["create", "f", "--project", mine.to_str().unwrap(), "--mount", "rw"]).ok();
}
