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
complete -c mvm -n "__fish_mvm_needs_command" -f -a "list" -d 'List all VMs'
complete -c mvm -n "__fish_mvm_needs_command" -f -a "ls" -d 'List all VMs'
complete -c mvm -n "__fish_mvm_needs_command" -f -a "inspect" -d 'Show everything about one VM'
complete -c mvm -n "__fish_mvm_needs_command" -f -a "port" -d 'List, add or remove port forwards'
complete -c mvm -n "__fish_mvm_needs_command" -f -a "rm" -d 'Remove a stopped VM with its state, volumes and logs'
complete -c mvm -n "__fish_mvm_needs_command" -f -a "doctor" -d 'Check that this host can run VMs'
complete -c mvm -n "__fish_mvm_needs_command" -f -a "completions" -d 'Print a shell completion script'
complete -c mvm -n "__fish_mvm_using_subcommand create" -l project -d 'Project directory, seen in the guest at the same absolute path' -r -F
complete -c mvm -n "__fish_mvm_using_subcommand create" -l cpus -d 'Virtual CPUs [default: 2, or the host config\'s defaults.cpus]' -r
complete -c mvm -n "__fish_mvm_using_subcommand create" -l memory -d 'Memory, e.g. 512M or 2G; at least 128M [default: 1G]' -r
complete -c mvm -n "__fish_mvm_using_subcommand create" -l port -d 'Forward a host port to a guest port (repeatable)' -r
complete -c mvm -n "__fish_mvm_using_subcommand create" -l mount -d 'How the guest sees the project' -r -f -a "overlay\t'Read-only project under a per-VM writable layer (the default)'
rw\t'The guest writes straight into the project'
ro\t'The guest can only read the project'"
complete -c mvm -n "__fish_mvm_using_subcommand create" -l volume -d 'A persistent volume mounted in the guest (repeatable)' -r
complete -c mvm -n "__fish_mvm_using_subcommand create" -l env -d 'An environment variable for the guest (repeatable)' -r
complete -c mvm -n "__fish_mvm_using_subcommand create" -l hypervisor -d 'The VMM that runs the VM [default: cloud-hypervisor, or the host config\'s]' -r -f -a "cloud-hypervisor\t''
qemu\t''"
complete -c mvm -n "__fish_mvm_using_subcommand create" -l kernel -d 'Kernel image to boot [default: the host\'s]' -r -F
complete -c mvm -n "__fish_mvm_using_subcommand create" -l root -d 'Root file system: the host\'s /usr read-only, or a directory tree' -r
complete -c mvm -n "__fish_mvm_using_subcommand create" -l persist -d 'Keep the overlay\'s writable layer across stops'
complete -c mvm -n "__fish_mvm_using_subcommand create" -l offline -d 'No network egress at all'
complete -c mvm -n "__fish_mvm_using_subcommand create" -l host-access -d 'Let the guest reach services listening on the host'
complete -c mvm -n "__fish_mvm_using_subcommand create" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c mvm -n "__fish_mvm_using_subcommand create" -s V -l version -d 'Print version'
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
complete -c mvm -n "__fish_mvm_using_subcommand port" -l json -d 'List as JSON'
complete -c mvm -n "__fish_mvm_using_subcommand port" -s h -l help -d 'Print help'
complete -c mvm -n "__fish_mvm_using_subcommand port" -s V -l version -d 'Print version'
complete -c mvm -n "__fish_mvm_using_subcommand rm" -s h -l help -d 'Print help'
complete -c mvm -n "__fish_mvm_using_subcommand rm" -s V -l version -d 'Print version'
complete -c mvm -n "__fish_mvm_using_subcommand doctor" -l json -d 'Print JSON instead of text'
complete -c mvm -n "__fish_mvm_using_subcommand doctor" -l fix -d 'Remove orphans: links, rules and runtime dirs of VMs that are not running'
complete -c mvm -n "__fish_mvm_using_subcommand doctor" -s h -l help -d 'Print help'
complete -c mvm -n "__fish_mvm_using_subcommand doctor" -s V -l version -d 'Print version'
complete -c mvm -n "__fish_mvm_using_subcommand completions" -s h -l help -d 'Print help'
complete -c mvm -n "__fish_mvm_using_subcommand completions" -s V -l version -d 'Print version'
