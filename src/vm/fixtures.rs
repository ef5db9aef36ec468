//! What the lifecycle core's unit tests start from.

use crate::name::VmName;
use crate::state::Paths;

/// A VM `web` on the host's `/usr`, made in a temporary state dir (which lives as long as
/// the first value).
pub fn web() -> (tempfile::TempDir, Paths, VmName) {
    let dir = tempfile::tempdir().unwrap();
    let paths = Paths::under(dir.path());
    let args =
        crate::vm::create::CreateArgs { name: "web".into(), root: "host".into(), ..Default::default() };
    let limits = crate::vm::create::HostLimits { cpus: 2, memory_mib: None };
    crate::vm::create::create(&args, &paths, &crate::config::host::HostConfig::default(), limits).unwrap();
    (dir, paths, "web".parse().unwrap())
}
