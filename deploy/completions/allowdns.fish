# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_allowdns_global_optspecs
    string join \n h/help V/version
end

function __fish_allowdns_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_allowdns_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_allowdns_using_subcommand
    set -l cmd (__fish_allowdns_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c allowdns -n "__fish_allowdns_needs_command" -s h -l help -d 'Print help'
complete -c allowdns -n "__fish_allowdns_needs_command" -s V -l version -d 'Print version'
complete -c allowdns -n "__fish_allowdns_needs_command" -f -a "serve" -d 'Run the resolver'
complete -c allowdns -n "__fish_allowdns_needs_command" -f -a "check" -d 'Load config, policies and zones exactly as `serve` would, report every problem with file:line, and exit (non-zero on errors)'
complete -c allowdns -n "__fish_allowdns_needs_command" -f -a "nft-ruleset" -d 'Print the default-deny nftables ruleset for an agent\'s namespace'
complete -c allowdns -n "__fish_allowdns_needs_command" -f -a "selftest" -d 'Check an agent\'s namespace from the inside: the ruleset is loaded, a canary connection to an address never handed out fails, DNS reaches only allowdns. Prints what it checked; exits 3 if the fence does not hold'
complete -c allowdns -n "__fish_allowdns_needs_command" -f -a "grant" -d 'Allow a name for one agent for a limited time, with a reason (audited)'
complete -c allowdns -n "__fish_allowdns_needs_command" -f -a "revoke" -d 'End a grant before its time'
complete -c allowdns -n "__fish_allowdns_needs_command" -f -a "status" -d 'List the policies in force, active grants and their expiry'
complete -c allowdns -n "__fish_allowdns_needs_command" -f -a "suggest" -d 'Suggest a policy from an audit log: every name the agent looked up, siblings grouped into wildcards, for a human to review'
complete -c allowdns -n "__fish_allowdns_needs_command" -f -a "report" -d 'Write one self-contained HTML page from an audit log: lookups over time, top names and rules, denied names by domain, blocked connections, grants and reloads, and (for a learn-mode log) the policy `suggest` would write beside its evidence'
complete -c allowdns -n "__fish_allowdns_needs_command" -f -a "run" -d 'Run a command fenced in a kennel: its own network namespace whose only way out is the firewall this allowdns feeds, and whose only DNS is it'
complete -c allowdns -n "__fish_allowdns_needs_command" -f -a "completions" -d 'Print shell completions (bash, zsh, fish) to stdout'
complete -c allowdns -n "__fish_allowdns_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c allowdns -n "__fish_allowdns_using_subcommand serve" -s c -l config -d 'YAML config file (see docs/manual.md, "Config reference")' -r -F
complete -c allowdns -n "__fish_allowdns_using_subcommand serve" -l listen -d 'Address to answer on, `IP:PORT` or `IP` (port 53); repeatable' -r
complete -c allowdns -n "__fish_allowdns_using_subcommand serve" -l upstream -d 'Forwarder, `IP:PORT` or `IP`; repeatable. Default: /etc/resolv.conf. `none`: answer only from local zones' -r
complete -c allowdns -n "__fish_allowdns_using_subcommand serve" -l root-hints -d 'Resolve recursively from this root hints file instead of forwarding' -r -F
complete -c allowdns -n "__fish_allowdns_using_subcommand serve" -l policy -d 'Policy file or directory of *.yaml policies; repeatable' -r -F
complete -c allowdns -n "__fish_allowdns_using_subcommand serve" -l zones -d 'Directory of RFC 1035 zone files (*.zone) answered locally' -r -F
complete -c allowdns -n "__fish_allowdns_using_subcommand serve" -l audit-log -d 'Audit log file (JSON Lines); `-` or absent means stdout' -r -F
complete -c allowdns -n "__fish_allowdns_using_subcommand serve" -l control -d 'Unix control socket for `grant`, `revoke` and `status` (mode 0600)' -r -F
complete -c allowdns -n "__fish_allowdns_using_subcommand serve" -l metrics -d 'Serve Prometheus metrics at http://ADDR/metrics' -r
complete -c allowdns -n "__fish_allowdns_using_subcommand serve" -l watch -d 'Reload when a policy, zone or config file changes (inotify; handles kubelet\'s ConfigMap `..data` swap). Default: on when a policy path is a directory. `--watch=false` turns it off' -r -f -a "true\t''
false\t''"
complete -c allowdns -n "__fish_allowdns_using_subcommand serve" -s h -l help -d 'Print help'
complete -c allowdns -n "__fish_allowdns_using_subcommand check" -s c -l config -d 'YAML config file (see docs/manual.md, "Config reference")' -r -F
complete -c allowdns -n "__fish_allowdns_using_subcommand check" -l listen -d 'Address to answer on, `IP:PORT` or `IP` (port 53); repeatable' -r
complete -c allowdns -n "__fish_allowdns_using_subcommand check" -l upstream -d 'Forwarder, `IP:PORT` or `IP`; repeatable. Default: /etc/resolv.conf. `none`: answer only from local zones' -r
complete -c allowdns -n "__fish_allowdns_using_subcommand check" -l root-hints -d 'Resolve recursively from this root hints file instead of forwarding' -r -F
complete -c allowdns -n "__fish_allowdns_using_subcommand check" -l policy -d 'Policy file or directory of *.yaml policies; repeatable' -r -F
complete -c allowdns -n "__fish_allowdns_using_subcommand check" -l zones -d 'Directory of RFC 1035 zone files (*.zone) answered locally' -r -F
complete -c allowdns -n "__fish_allowdns_using_subcommand check" -l audit-log -d 'Audit log file (JSON Lines); `-` or absent means stdout' -r -F
complete -c allowdns -n "__fish_allowdns_using_subcommand check" -l control -d 'Unix control socket for `grant`, `revoke` and `status` (mode 0600)' -r -F
complete -c allowdns -n "__fish_allowdns_using_subcommand check" -l metrics -d 'Serve Prometheus metrics at http://ADDR/metrics' -r
complete -c allowdns -n "__fish_allowdns_using_subcommand check" -s h -l help -d 'Print help'
complete -c allowdns -n "__fish_allowdns_using_subcommand nft-ruleset" -s c -l config -d 'YAML config file (see docs/manual.md, "Config reference")' -r -F
complete -c allowdns -n "__fish_allowdns_using_subcommand nft-ruleset" -l listen -d 'Address to answer on, `IP:PORT` or `IP` (port 53); repeatable' -r
complete -c allowdns -n "__fish_allowdns_using_subcommand nft-ruleset" -l upstream -d 'Forwarder, `IP:PORT` or `IP`; repeatable. Default: /etc/resolv.conf. `none`: answer only from local zones' -r
complete -c allowdns -n "__fish_allowdns_using_subcommand nft-ruleset" -l root-hints -d 'Resolve recursively from this root hints file instead of forwarding' -r -F
complete -c allowdns -n "__fish_allowdns_using_subcommand nft-ruleset" -l policy -d 'Policy file or directory of *.yaml policies; repeatable' -r -F
complete -c allowdns -n "__fish_allowdns_using_subcommand nft-ruleset" -l zones -d 'Directory of RFC 1035 zone files (*.zone) answered locally' -r -F
complete -c allowdns -n "__fish_allowdns_using_subcommand nft-ruleset" -l audit-log -d 'Audit log file (JSON Lines); `-` or absent means stdout' -r -F
complete -c allowdns -n "__fish_allowdns_using_subcommand nft-ruleset" -l control -d 'Unix control socket for `grant`, `revoke` and `status` (mode 0600)' -r -F
complete -c allowdns -n "__fish_allowdns_using_subcommand nft-ruleset" -l metrics -d 'Serve Prometheus metrics at http://ADDR/metrics' -r
complete -c allowdns -n "__fish_allowdns_using_subcommand nft-ruleset" -l agent -d 'The agent (policy) to print for; needed when several are loaded' -r
complete -c allowdns -n "__fish_allowdns_using_subcommand nft-ruleset" -l dns -d 'allowdns\'s address as the agent sees it (DNS is allowed only there); repeatable. Default: the listen addresses' -r
complete -c allowdns -n "__fish_allowdns_using_subcommand nft-ruleset" -l sidecar-uid -d 'Sidecar: allowdns runs in the agent\'s namespace as this uid; only its sockets may reach the upstream forwarders' -r
complete -c allowdns -n "__fish_allowdns_using_subcommand nft-ruleset" -l open-tcp -d 'Sidecar: a TCP port open inbound (metrics, probes); repeatable' -r
complete -c allowdns -n "__fish_allowdns_using_subcommand nft-ruleset" -l load -d 'Load the ruleset with `nft -f -` in this namespace instead of printing it'
complete -c allowdns -n "__fish_allowdns_using_subcommand nft-ruleset" -s h -l help -d 'Print help'
complete -c allowdns -n "__fish_allowdns_using_subcommand selftest" -l netns -d 'The agent\'s network namespace: a name under /run/netns, or a path' -r
complete -c allowdns -n "__fish_allowdns_using_subcommand selftest" -l dns -d 'allowdns\'s address as the agent sees it; repeatable. Without it, DNS to allowdns is not checked' -r
complete -c allowdns -n "__fish_allowdns_using_subcommand selftest" -l table -d 'The fence\'s table (`firewall.table` in the policy)' -r
complete -c allowdns -n "__fish_allowdns_using_subcommand selftest" -l family -d 'The table\'s family (`firewall.family` in the policy)' -r -f -a "inet\t''
ip\t''
ip6\t''"
complete -c allowdns -n "__fish_allowdns_using_subcommand selftest" -s h -l help -d 'Print help'
complete -c allowdns -n "__fish_allowdns_using_subcommand grant" -l control -d 'The running allowdns\'s control socket (`control_socket` in its config)' -r -F
complete -c allowdns -n "__fish_allowdns_using_subcommand grant" -l agent -d 'The agent (policy) the exception is for' -r
complete -c allowdns -n "__fish_allowdns_using_subcommand grant" -l name -d 'Name or pattern, as in a policy (`api.example.com`, `*.example.com`)' -r
complete -c allowdns -n "__fish_allowdns_using_subcommand grant" -l for -d 'How long, e.g. `30m`, `2h` (at most 7 days)' -r
complete -c allowdns -n "__fish_allowdns_using_subcommand grant" -l reason -d 'Why; required, and written to the audit log' -r
complete -c allowdns -n "__fish_allowdns_using_subcommand grant" -s h -l help -d 'Print help'
complete -c allowdns -n "__fish_allowdns_using_subcommand revoke" -l control -d 'The running allowdns\'s control socket (`control_socket` in its config)' -r -F
complete -c allowdns -n "__fish_allowdns_using_subcommand revoke" -l agent -d 'The agent (policy) the exception is for' -r
complete -c allowdns -n "__fish_allowdns_using_subcommand revoke" -l name -d 'Name or pattern, as in a policy (`api.example.com`, `*.example.com`)' -r
complete -c allowdns -n "__fish_allowdns_using_subcommand revoke" -s h -l help -d 'Print help'
complete -c allowdns -n "__fish_allowdns_using_subcommand status" -l control -d 'The running allowdns\'s control socket (`control_socket` in its config)' -r -F
complete -c allowdns -n "__fish_allowdns_using_subcommand status" -l json -d 'Print the raw JSON reply'
complete -c allowdns -n "__fish_allowdns_using_subcommand status" -s h -l help -d 'Print help'
complete -c allowdns -n "__fish_allowdns_using_subcommand suggest" -l audit-log -d 'Audit log (JSON Lines) to learn from' -r -F
complete -c allowdns -n "__fish_allowdns_using_subcommand suggest" -l agent -d 'The agent to suggest for; needed when the log holds several' -r
complete -c allowdns -n "__fish_allowdns_using_subcommand suggest" -s o -l output -d 'Where to write the policy; `-` or absent means stdout' -r -F
complete -c allowdns -n "__fish_allowdns_using_subcommand suggest" -l include-denied -d 'Make names that were only ever denied entries; by default they are listed commented out'
complete -c allowdns -n "__fish_allowdns_using_subcommand suggest" -l skip-malformed -d 'Warn about malformed lines and skip them, instead of failing'
complete -c allowdns -n "__fish_allowdns_using_subcommand suggest" -s h -l help -d 'Print help'
complete -c allowdns -n "__fish_allowdns_using_subcommand report" -l audit-log -d 'Audit log (JSON Lines) to report on' -r -F
complete -c allowdns -n "__fish_allowdns_using_subcommand report" -l agent -d 'Only this agent\'s lookups, connections and grants' -r
complete -c allowdns -n "__fish_allowdns_using_subcommand report" -l since -d 'Only lines from this time on: RFC 3339 (`2026-11-22T08:00:00Z`) or a duration back from now (`2h`, `30m`, `7days`)' -r
complete -c allowdns -n "__fish_allowdns_using_subcommand report" -s o -l output -d 'Where to write the HTML page; `-` or absent means stdout' -r -F
complete -c allowdns -n "__fish_allowdns_using_subcommand report" -l skip-malformed -d 'Skip malformed lines (counted and named on the page) instead of failing'
complete -c allowdns -n "__fish_allowdns_using_subcommand report" -s h -l help -d 'Print help'
complete -c allowdns -n "__fish_allowdns_using_subcommand run" -s c -l config -d 'YAML config file (see docs/manual.md); its `listen` does not apply, and its `policies` must name one policy' -r -F
complete -c allowdns -n "__fish_allowdns_using_subcommand run" -l policy -d 'The agent\'s policy file (one). With --learn (and no --config) it may be left out: CMD then starts from an empty policy' -r -F
complete -c allowdns -n "__fish_allowdns_using_subcommand run" -l agent -d 'With --learn and no --policy: the agent\'s name (default: CMD\'s file name)' -r
complete -c allowdns -n "__fish_allowdns_using_subcommand run" -l upstream -d 'Forwarder, `IP:PORT` or `IP`; repeatable. Default: /etc/resolv.conf. `none`: answer only from local zones' -r
complete -c allowdns -n "__fish_allowdns_using_subcommand run" -l root-hints -d 'Resolve recursively from this root hints file instead of forwarding' -r -F
complete -c allowdns -n "__fish_allowdns_using_subcommand run" -l zones -d 'Directory of RFC 1035 zone files (*.zone) answered locally' -r -F
complete -c allowdns -n "__fish_allowdns_using_subcommand run" -l audit-log -d 'Audit log of CMD\'s lookups (JSON Lines); `-` is stdout, which CMD shares. Absent: not kept (with --learn, kept until the suggestion is made)' -r -F
complete -c allowdns -n "__fish_allowdns_using_subcommand run" -l control -d 'Unix control socket for `grant`, `revoke` and `status` while CMD runs' -r -F
complete -c allowdns -n "__fish_allowdns_using_subcommand run" -l metrics -d 'Serve Prometheus metrics at http://ADDR/metrics' -r
complete -c allowdns -n "__fish_allowdns_using_subcommand run" -l suggest-out -d 'With --learn: write the suggested policy here instead of stdout' -r -F
complete -c allowdns -n "__fish_allowdns_using_subcommand run" -l alerts -d 'Write alerts here instead of stderr (which CMD shares)' -r -F
complete -c allowdns -n "__fish_allowdns_using_subcommand run" -l listen -d 'Refused with a usage error: allowdns answers only inside the kennel' -r
complete -c allowdns -n "__fish_allowdns_using_subcommand run" -l ro-bind -d 'Share a host path (file or directory) read-only at the same path inside, even under the kennel\'s private /tmp, /run, /var/tmp or /dev/shm; repeatable' -r -F
complete -c allowdns -n "__fish_allowdns_using_subcommand run" -l bind -d 'Share a host path read-write at the same path inside; repeatable' -r -F
complete -c allowdns -n "__fish_allowdns_using_subcommand run" -l preserve-fds -d 'Pass file descriptors 3 to 3+N-1 on to CMD; every other one above 2 is closed' -r
complete -c allowdns -n "__fish_allowdns_using_subcommand run" -l learn -d 'Learn mode: resolve (and open) names outside the policy, then print the `allowdns suggest` policy for what CMD looked up'
complete -c allowdns -n "__fish_allowdns_using_subcommand run" -l monitor -d 'Monitor mode: let CMD resolve and reach anything, but alert on every lookup and connection the policy does not cover'
complete -c allowdns -n "__fish_allowdns_using_subcommand run" -s h -l help -d 'Print help'
complete -c allowdns -n "__fish_allowdns_using_subcommand completions" -s h -l help -d 'Print help'
complete -c allowdns -n "__fish_allowdns_using_subcommand help; and not __fish_seen_subcommand_from serve check nft-ruleset selftest grant revoke status suggest report run completions help" -f -a "serve" -d 'Run the resolver'
complete -c allowdns -n "__fish_allowdns_using_subcommand help; and not __fish_seen_subcommand_from serve check nft-ruleset selftest grant revoke status suggest report run completions help" -f -a "check" -d 'Load config, policies and zones exactly as `serve` would, report every problem with file:line, and exit (non-zero on errors)'
complete -c allowdns -n "__fish_allowdns_using_subcommand help; and not __fish_seen_subcommand_from serve check nft-ruleset selftest grant revoke status suggest report run completions help" -f -a "nft-ruleset" -d 'Print the default-deny nftables ruleset for an agent\'s namespace'
complete -c allowdns -n "__fish_allowdns_using_subcommand help; and not __fish_seen_subcommand_from serve check nft-ruleset selftest grant revoke status suggest report run completions help" -f -a "selftest" -d 'Check an agent\'s namespace from the inside: the ruleset is loaded, a canary connection to an address never handed out fails, DNS reaches only allowdns. Prints what it checked; exits 3 if the fence does not hold'
complete -c allowdns -n "__fish_allowdns_using_subcommand help; and not __fish_seen_subcommand_from serve check nft-ruleset selftest grant revoke status suggest report run completions help" -f -a "grant" -d 'Allow a name for one agent for a limited time, with a reason (audited)'
complete -c allowdns -n "__fish_allowdns_using_subcommand help; and not __fish_seen_subcommand_from serve check nft-ruleset selftest grant revoke status suggest report run completions help" -f -a "revoke" -d 'End a grant before its time'
complete -c allowdns -n "__fish_allowdns_using_subcommand help; and not __fish_seen_subcommand_from serve check nft-ruleset selftest grant revoke status suggest report run completions help" -f -a "status" -d 'List the policies in force, active grants and their expiry'
complete -c allowdns -n "__fish_allowdns_using_subcommand help; and not __fish_seen_subcommand_from serve check nft-ruleset selftest grant revoke status suggest report run completions help" -f -a "suggest" -d 'Suggest a policy from an audit log: every name the agent looked up, siblings grouped into wildcards, for a human to review'
complete -c allowdns -n "__fish_allowdns_using_subcommand help; and not __fish_seen_subcommand_from serve check nft-ruleset selftest grant revoke status suggest report run completions help" -f -a "report" -d 'Write one self-contained HTML page from an audit log: lookups over time, top names and rules, denied names by domain, blocked connections, grants and reloads, and (for a learn-mode log) the policy `suggest` would write beside its evidence'
complete -c allowdns -n "__fish_allowdns_using_subcommand help; and not __fish_seen_subcommand_from serve check nft-ruleset selftest grant revoke status suggest report run completions help" -f -a "run" -d 'Run a command fenced in a kennel: its own network namespace whose only way out is the firewall this allowdns feeds, and whose only DNS is it'
complete -c allowdns -n "__fish_allowdns_using_subcommand help; and not __fish_seen_subcommand_from serve check nft-ruleset selftest grant revoke status suggest report run completions help" -f -a "completions" -d 'Print shell completions (bash, zsh, fish) to stdout'
complete -c allowdns -n "__fish_allowdns_using_subcommand help; and not __fish_seen_subcommand_from serve check nft-ruleset selftest grant revoke status suggest report run completions help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
