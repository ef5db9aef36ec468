//! Failpoints: named places where a test can make mvm die on purpose, to prove that a
//! crash there leaves consistent state. Set `MVM_FAILPOINT=NAME` and the process aborts
//! (as `kill -9` would end it: no destructors, no cleanup) when it reaches `NAME`.

/// Aborts the process if `MVM_FAILPOINT` names this point.
pub fn hit(name: &str) {
    if std::env::var_os("MVM_FAILPOINT").is_some_and(|value| value == name) {
        eprintln!("mvm: failpoint {name} reached, aborting");
        std::process::abort();
    }
}
