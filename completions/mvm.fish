# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_mvm_global_optspecs
    string join \n h/help V/version
end

function __fish_mvm_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_mvm_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_mvm_using_subcommand
    set -l cmd (__fish_mvm_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c mvm -n "__fish_mvm_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c mvm -n "__fish_mvm_needs_command" -s V -l version -d 'Print version'
complete -c mvm -n "__fish_mvm_needs_command" -f -a "create" -d 'Declare a new VM (starts nothing)'
complete -c mvm -n "__fish_mvm_needs_command" -f -a "start" -d 'Start a VM and wait until it answers'
complete -c mvm -n "__fish_mvm_needs_command" -f -a "stop" -d 'Shut a VM down and remove everything it had on the host'
complete -c mvm -n "__fish_mvm_needs_command" -f -a "up" -d 'Create and start the VM of a project as needed, leased to the calling shell (for .envrc)'
complete -c mvm -n "__fish_mvm_needs_command" -f -a "direnv" -d 'Print .envrc lines that bring the project\'s VM up when a shell enters it'
complete -c mvm -n "__fish_mvm_needs_command" -f -a "restart" -d 'Stop, then start a VM'
complete -c mvm -n "__fish_mvm_needs_command" -f -a "pause" -d 'Freeze a running VM\'s CPUs, keeping its processes and connections (resumed by `resume`, `up`, `shell`)'
complete -c mvm -n "__fish_mvm_needs_command" -f -a "resume" -d 'Run a paused VM again, its clock set to the host\'s'
complete -c mvm -n "__fish_mvm_needs_command" -f -a "shell" -d 'Open a shell in a VM, or run one command there'
complete -c mvm -n "__fish_mvm_needs_command" -f -a "list" -d 'List all VMs'
complete -c mvm -n "__fish_mvm_needs_command" -f -a "ls" -d 'List all VMs'
complete -c mvm -n "__fish_mvm_needs_command" -f -a "inspect" -d 'Show everything about one VM'
complete -c mvm -n "__fish_mvm_needs_command" -f -a "port" -d 'List, add or remove port forwards'
complete -c mvm -n "__fish_mvm_needs_command" -f -a "diff" -d 'Show what a VM changed in its project\'s overlay'
complete -c mvm -n "__fish_mvm_needs_command" -f -a "apply" -d 'Copy a VM\'s overlay changes into the project'
complete -c mvm -n "__fish_mvm_needs_command" -f -a "discard" -d 'Drop a stopped VM\'s overlay changes'
complete -c mvm -n "__fish_mvm_needs_command" -f -a "logs" -d 'Show a VM\'s console (or another log)'
complete -c mvm -n "__fish_mvm_needs_command" -f -a "rm" -d 'Remove a stopped VM with its state, volumes and logs'
complete -c mvm -n "__fish_mvm_needs_command" -f -a "image" -d 'Build, list and remove images: clean Debian trees VMs boot with `create --image`'
complete -c mvm -n "__fish_mvm_needs_command" -f -a "templates" -d 'List the templates `create --template` takes, or show one'
complete -c mvm -n "__fish_mvm_needs_command" -f -a "doctor" -d 'Check that this host can run VMs'
complete -c mvm -n "__fish_mvm_needs_command" -f -a "setup" -d 'Prepare this host once so that a group\'s members use mvm without root'
complete -c mvm -n "__fish_mvm_needs_command" -f -a "completions" -d 'Print a shell completion script'
complete -c mvm -n "__fish_mvm_needs_command" -f -a "supervise" -d 'Run a VM\'s supervisor (started by `mvm start`)'
complete -c mvm -n "__fish_mvm_using_subcommand create" -s t -l template -d 'Start from a template (`mvm templates` lists them; a path to a .toml file works too); the other options add to it or override it' -r
complete -c mvm -n "__fish_mvm_using_subcommand create" -l project -d 'Project directory, seen in the guest at the same absolute path' -r -F
complete -c mvm -n "__fish_mvm_using_subcommand create" -l cpus -d 'Virtual CPUs [default: 2, or the host config\'s defaults.cpus]' -r
complete -c mvm -n "__fish_mvm_using_subcommand create" -l memory -d 'Memory, e.g. 512M or 2G; at least 128M [default: 1G]' -r
complete -c mvm -n "__fish_mvm_using_subcommand create" -l disk -d 'The most the VM may take on the host\'s disk, everything its guest writes included (its system layer, /etc, /var, the project\'s overlay, volumes), e.g. 8G; at least 2G [default: 20G, or the host config\'s defaults.disk]' -r
complete -c mvm -n "__fish_mvm_using_subcommand create" -l port -d 'Forward a host port to a guest port (repeatable); HOST 0 picks one, the guest\'s number when it is free' -r
complete -c mvm -n "__fish_mvm_using_subcommand create" -l mount -d 'How the guest sees the project' -r -f -a "overlay\t'Read-only project under a per-VM writable layer (the default)'
rw\t'The guest writes straight into the project'
ro\t'The guest can only read the project'"
complete -c mvm -n "__fish_mvm_using_subcommand create" -l volume -d 'A persistent volume mounted in the guest (repeatable)' -r
complete -c mvm -n "__fish_mvm_using_subcommand create" -l env -d 'An environment variable for the guest (repeatable)' -r
complete -c mvm -n "__fish_mvm_using_subcommand create" -l hypervisor -d 'The VMM that runs the VM [default: auto (cloud-hypervisor where hardware KVM works and it is installed, else QEMU), or the host config\'s]' -r -f -a "auto\t'cloud-hypervisor where hardware KVM works and it is installed, else QEMU (with TCG where KVM cannot run guests): chosen at every start'
cloud-hypervisor\t''
qemu\t''"
complete -c mvm -n "__fish_mvm_using_subcommand create" -l kernel -d 'Kernel image to boot [default: the host\'s]' -r -F
complete -c mvm -n "__fish_mvm_using_subcommand create" -l root -d 'Root file system: the host\'s /usr read-only, or a directory tree' -r
complete -c mvm -n "__fish_mvm_using_subcommand create" -l image -d 'Boot an image built with `mvm image build` (a clean Debian tree, shared read-only) instead of the host\'s /usr' -r
complete -c mvm -n "__fish_mvm_using_subcommand create" -l package -d 'Debian packages the VM runs on, installed once into a cached layer shared by every VM that asks for the same (repeatable or comma-separated; adds to a template\'s)' -r
complete -c mvm -n "__fish_mvm_using_subcommand create" -l ignore-port -d 'Never forward these guest ports by themselves: PORT or FIRST-LAST, repeatable or comma-separated' -r
complete -c mvm -n "__fish_mvm_using_subcommand create" -l persist -d 'Keep the overlay\'s writable layer across stops'
complete -c mvm -n "__fish_mvm_using_subcommand create" -l ephemeral-system -d 'Drop what guest root installs (the system layer) at every start [default: kept, like /var]'
complete -c mvm -n "__fish_mvm_using_subcommand create" -l offline -d 'No network egress at all'
complete -c mvm -n "__fish_mvm_using_subcommand create" -l host-access -d 'Let the guest reach services listening on the host'
complete -c mvm -n "__fish_mvm_using_subcommand create" -l no-auto-ports -d 'Do not forward the guest\'s listeners by themselves (see `mvm port`)'
complete -c mvm -n "__fish_mvm_using_subcommand create" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c mvm -n "__fish_mvm_using_subcommand create" -s V -l version -d 'Print version'
complete -c mvm -n "__fish_mvm_using_subcommand start" -l timeout -d 'Seconds to wait for the guest agent' -r
complete -c mvm -n "__fish_mvm_using_subcommand start" -l no-wait -d 'Return once the supervisor runs, without waiting for the guest'
complete -c mvm -n "__fish_mvm_using_subcommand start" -s h -l help -d 'Print help'
complete -c mvm -n "__fish_mvm_using_subcommand start" -s V -l version -d 'Print version'
complete -c mvm -n "__fish_mvm_using_subcommand stop" -l timeout -d 'Seconds to wait for a graceful shutdown before killing' -r
complete -c mvm -n "__fish_mvm_using_subcommand stop" -l force -d 'Kill the VM at once instead of shutting it down'
complete -c mvm -n "__fish_mvm_using_subcommand stop" -s h -l help -d 'Print help'
complete -c mvm -n "__fish_mvm_using_subcommand stop" -s V -l version -d 'Print version'
complete -c mvm -n "__fish_mvm_using_subcommand up" -l project -d 'The project directory [default: the current directory]' -r -F
complete -c mvm -n "__fish_mvm_using_subcommand up" -s t -l template -d 'The template to create the VM from, if it does not exist yet' -r
complete -c mvm -n "__fish_mvm_using_subcommand up" -l idle -d 'Pause the VM once no shell has been in the project for this long (if `up` started it); the next `up` or `shell` resumes it in milliseconds' -r
complete -c mvm -n "__fish_mvm_using_subcommand up" -l stop-after -d 'Stop it once no shell has been in the project for this long' -r
complete -c mvm -n "__fish_mvm_using_subcommand up" -l timeout -d 'Seconds to wait for the guest agent' -r
complete -c mvm -n "__fish_mvm_using_subcommand up" -l no-lease -d 'Take no lease for the calling shell'
complete -c mvm -n "__fish_mvm_using_subcommand up" -l export -d 'Print `export MVM_VM=… MVM_IP=…` lines for a shell to eval (what `.envrc` uses)'
complete -c mvm -n "__fish_mvm_using_subcommand up" -s h -l help -d 'Print help'
complete -c mvm -n "__fish_mvm_using_subcommand up" -s V -l version -d 'Print version'
complete -c mvm -n "__fish_mvm_using_subcommand direnv" -s t -l template -d 'The template to create the VM from on first entry' -r
complete -c mvm -n "__fish_mvm_using_subcommand direnv" -l idle -d 'The idle time before the VM pauses [default: $MVM_IDLE, else 5m; it stops after $MVM_STOP_AFTER, else 1h]' -r
complete -c mvm -n "__fish_mvm_using_subcommand direnv" -s h -l help -d 'Print help'
complete -c mvm -n "__fish_mvm_using_subcommand direnv" -s V -l version -d 'Print version'
complete -c mvm -n "__fish_mvm_using_subcommand restart" -s h -l help -d 'Print help'
complete -c mvm -n "__fish_mvm_using_subcommand restart" -s V -l version -d 'Print version'
complete -c mvm -n "__fish_mvm_using_subcommand pause" -s h -l help -d 'Print help'
complete -c mvm -n "__fish_mvm_using_subcommand pause" -s V -l version -d 'Print version'
complete -c mvm -n "__fish_mvm_using_subcommand resume" -s h -l help -d 'Print help'
complete -c mvm -n "__fish_mvm_using_subcommand resume" -s V -l version -d 'Print version'
complete -c mvm -n "__fish_mvm_using_subcommand shell" -l env -d 'An environment variable for the command (repeatable)' -r
complete -c mvm -n "__fish_mvm_using_subcommand shell" -s w -l workdir -d 'Directory to run in [default: the current directory if inside the project, else the project]' -r
complete -c mvm -n "__fish_mvm_using_subcommand shell" -s u -l user -d 'Run as this guest user: `root` (to install software into the VM\'s system layer) or UID[:GID] [default: you, with your host uid and gid]' -r
complete -c mvm -n "__fish_mvm_using_subcommand shell" -l start -d 'Start the VM first if it is stopped'
complete -c mvm -n "__fish_mvm_using_subcommand shell" -s t -l tty -d 'Run the command on a terminal even with a command given'
complete -c mvm -n "__fish_mvm_using_subcommand shell" -s h -l help -d 'Print help'
complete -c mvm -n "__fish_mvm_using_subcommand shell" -s V -l version -d 'Print version'
complete -c mvm -n "__fish_mvm_using_subcommand list" -l json -d 'Print a JSON array (stable field names) instead of a table'
complete -c mvm -n "__fish_mvm_using_subcommand list" -s h -l help -d 'Print help'
complete -c mvm -n "__fish_mvm_using_subcommand list" -s V -l version -d 'Print version'
complete -c mvm -n "__fish_mvm_using_subcommand ls" -l json -d 'Print a JSON array (stable field names) instead of a table'
complete -c mvm -n "__fish_mvm_using_subcommand ls" -s h -l help -d 'Print help'
complete -c mvm -n "__fish_mvm_using_subcommand ls" -s V -l version -d 'Print version'
complete -c mvm -n "__fish_mvm_using_subcommand inspect" -l json -d 'Print JSON (stable field names) instead of text'
complete -c mvm -n "__fish_mvm_using_subcommand inspect" -s h -l help -d 'Print help'
complete -c mvm -n "__fish_mvm_using_subcommand inspect" -s V -l version -d 'Print version'
complete -c mvm -n "__fish_mvm_using_subcommand port" -l rm -d 'Stop forwarding host port HOST (every protocol, or only /tcp or /udp)' -r
complete -c mvm -n "__fish_mvm_using_subcommand port" -l auto -d 'Forward the guest\'s listeners by themselves, or not, for this VM' -r -f -a "on\t''
off\t''"
complete -c mvm -n "__fish_mvm_using_subcommand port" -l ignore -d 'Never forward these guest ports by themselves: PORT or FIRST-LAST, comma-separated' -r
complete -c mvm -n "__fish_mvm_using_subcommand port" -l no-ignore -d 'Forward these ignored guest ports by themselves again' -r
complete -c mvm -n "__fish_mvm_using_subcommand port" -l json -d 'List as JSON (with --watch: one JSON object per change, a line each)'
complete -c mvm -n "__fish_mvm_using_subcommand port" -s w -l watch -d 'Print the forwards, then every change as it happens (automatic forwards come and go with the guest\'s listeners), until interrupted'
complete -c mvm -n "__fish_mvm_using_subcommand port" -s h -l help -d 'Print help'
complete -c mvm -n "__fish_mvm_using_subcommand port" -s V -l version -d 'Print version'
complete -c mvm -n "__fish_mvm_using_subcommand diff" -l patch -d 'Show a unified diff of changed text files'
complete -c mvm -n "__fish_mvm_using_subcommand diff" -l json -d 'Print JSON: [{"path", "kind"}]'
complete -c mvm -n "__fish_mvm_using_subcommand diff" -s h -l help -d 'Print help'
complete -c mvm -n "__fish_mvm_using_subcommand diff" -s V -l version -d 'Print version'
complete -c mvm -n "__fish_mvm_using_subcommand apply" -l force -d 'Apply even paths whose project copy changed since the VM\'s copy was made'
complete -c mvm -n "__fish_mvm_using_subcommand apply" -s h -l help -d 'Print help'
complete -c mvm -n "__fish_mvm_using_subcommand apply" -s V -l version -d 'Print version'
complete -c mvm -n "__fish_mvm_using_subcommand discard" -s h -l help -d 'Print help'
complete -c mvm -n "__fish_mvm_using_subcommand discard" -s V -l version -d 'Print version'
complete -c mvm -n "__fish_mvm_using_subcommand logs" -l source -d 'Which log to show' -r -f -a "console\t''
supervisor\t''
hypervisor\t''"
complete -c mvm -n "__fish_mvm_using_subcommand logs" -l process -d 'Show this declared process\'s output instead' -r
complete -c mvm -n "__fish_mvm_using_subcommand logs" -s f -l follow -d 'Keep printing what is appended, until the VM stops'
complete -c mvm -n "__fish_mvm_using_subcommand logs" -s h -l help -d 'Print help'
complete -c mvm -n "__fish_mvm_using_subcommand logs" -s V -l version -d 'Print version'
complete -c mvm -n "__fish_mvm_using_subcommand rm" -l force -d 'Stop the VM first if it is running'
complete -c mvm -n "__fish_mvm_using_subcommand rm" -l keep-volumes -d 'Keep the VM\'s volumes; a new VM of the same name with the same volumes gets them back'
complete -c mvm -n "__fish_mvm_using_subcommand rm" -s h -l help -d 'Print help'
complete -c mvm -n "__fish_mvm_using_subcommand rm" -s V -l version -d 'Print version'
complete -c mvm -n "__fish_mvm_using_subcommand image; and not __fish_seen_subcommand_from build list ls rm" -s h -l help -d 'Print help'
complete -c mvm -n "__fish_mvm_using_subcommand image; and not __fish_seen_subcommand_from build list ls rm" -s V -l version -d 'Print version'
complete -c mvm -n "__fish_mvm_using_subcommand image; and not __fish_seen_subcommand_from build list ls rm" -f -a "build" -d 'Build an image from Debian\'s archive with mmdebstrap (root; once per name)'
complete -c mvm -n "__fish_mvm_using_subcommand image; and not __fish_seen_subcommand_from build list ls rm" -f -a "list" -d 'List the images'
complete -c mvm -n "__fish_mvm_using_subcommand image; and not __fish_seen_subcommand_from build list ls rm" -f -a "ls" -d 'List the images'
complete -c mvm -n "__fish_mvm_using_subcommand image; and not __fish_seen_subcommand_from build list ls rm" -f -a "rm" -d 'Remove an image no VM is made from (root)'
complete -c mvm -n "__fish_mvm_using_subcommand image; and __fish_seen_subcommand_from build" -l suite -d 'The Debian suite' -r
complete -c mvm -n "__fish_mvm_using_subcommand image; and __fish_seen_subcommand_from build" -l include -d 'Packages to add to Debian\'s minimal system with apt (repeatable or comma-separated)' -r
complete -c mvm -n "__fish_mvm_using_subcommand image; and __fish_seen_subcommand_from build" -s h -l help -d 'Print help'
complete -c mvm -n "__fish_mvm_using_subcommand image; and __fish_seen_subcommand_from build" -s V -l version -d 'Print version'
complete -c mvm -n "__fish_mvm_using_subcommand image; and __fish_seen_subcommand_from list" -l json -d 'Print JSON (stable field names)'
complete -c mvm -n "__fish_mvm_using_subcommand image; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c mvm -n "__fish_mvm_using_subcommand image; and __fish_seen_subcommand_from list" -s V -l version -d 'Print version'
complete -c mvm -n "__fish_mvm_using_subcommand image; and __fish_seen_subcommand_from ls" -l json -d 'Print JSON (stable field names)'
complete -c mvm -n "__fish_mvm_using_subcommand image; and __fish_seen_subcommand_from ls" -s h -l help -d 'Print help'
complete -c mvm -n "__fish_mvm_using_subcommand image; and __fish_seen_subcommand_from ls" -s V -l version -d 'Print version'
complete -c mvm -n "__fish_mvm_using_subcommand image; and __fish_seen_subcommand_from rm" -s h -l help -d 'Print help'
complete -c mvm -n "__fish_mvm_using_subcommand image; and __fish_seen_subcommand_from rm" -s V -l version -d 'Print version'
complete -c mvm -n "__fish_mvm_using_subcommand templates" -l json -d 'Print a JSON array instead of a table'
complete -c mvm -n "__fish_mvm_using_subcommand templates" -s h -l help -d 'Print help'
complete -c mvm -n "__fish_mvm_using_subcommand templates" -s V -l version -d 'Print version'
complete -c mvm -n "__fish_mvm_using_subcommand doctor" -l json -d 'Print JSON instead of text'
complete -c mvm -n "__fish_mvm_using_subcommand doctor" -l fix -d 'Remove orphans: links, rules and runtime dirs of VMs that are not running'
complete -c mvm -n "__fish_mvm_using_subcommand doctor" -s h -l help -d 'Print help'
complete -c mvm -n "__fish_mvm_using_subcommand doctor" -s V -l version -d 'Print version'
complete -c mvm -n "__fish_mvm_using_subcommand setup" -l group -d 'The group whose members may use mvm without root (made if missing)' -r
complete -c mvm -n "__fish_mvm_using_subcommand setup" -l undo -d 'Reverse it: remove the helper and the group\'s access'
complete -c mvm -n "__fish_mvm_using_subcommand setup" -s h -l help -d 'Print help'
complete -c mvm -n "__fish_mvm_using_subcommand setup" -s V -l version -d 'Print version'
complete -c mvm -n "__fish_mvm_using_subcommand completions" -s h -l help -d 'Print help'
complete -c mvm -n "__fish_mvm_using_subcommand completions" -s V -l version -d 'Print version'
complete -c mvm -n "__fish_mvm_using_subcommand supervise" -s h -l help -d 'Print help'
complete -c mvm -n "__fish_mvm_using_subcommand supervise" -s V -l version -d 'Print version'
