//! Package layers: a VM (or its template) that declares `packages` runs on an image of
//! its base's Debian suite with those packages, built once on the host with mmdebstrap
//! (the host's network; the guest needs none) and cached in the image store under a
//! name derived from the hash of (suite, base packages, packages): `pkg-<hash>`. Every VM
//! asking for the same set shares it read-only, each with its own system layer above.
//!
//! The base of a VM on the host's `/usr` is a clean tree of the host's own Debian release,
//! not the host's `/usr` itself: a layer installed over the host's `/usr` would stop
//! matching it at the host's next upgrade, while this one stays valid for every VM.

use sha2::{Digest, Sha256};

use super::build::BuildRequest;
use super::{ImageName, DEFAULT_SUITE};
use crate::config::vm::{RootModel, VmConfig};
use crate::error::UserError;
use crate::state::Paths;

/// The Debian release this host runs (`VERSION_CODENAME` of `/etc/os-release`), else
/// [`DEFAULT_SUITE`].
pub fn host_suite() -> String {
    let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let debian = release.lines().any(|line| line == "ID=debian");
    release
        .lines()
        .find_map(|line| line.strip_prefix("VERSION_CODENAME="))
        .map(|codename| codename.trim_matches('"').to_string())
        .filter(|codename| debian && crate::spec::check_debian_word("suite", codename).is_ok())
        .unwrap_or_else(|| DEFAULT_SUITE.to_string())
}

/// The image a package layer of `packages` over (`suite`, `base`) is cached as.
pub fn layer_request(suite: &str, base: &[String], packages: &[String]) -> BuildRequest {
    let mut include: Vec<String> = base.iter().chain(packages).cloned().collect();
    include.sort();
    include.dedup();
    let digest = Sha256::digest(format!("{suite}\n{}", include.join("\n")));
    // 112 bits: no one finds another package set with the same name (and `built` checks).
    let hash: String = digest.iter().take(14).map(|byte| format!("{byte:02x}")).collect();
    let name: ImageName = format!("pkg-{hash}").parse().expect("a valid image name");
    BuildRequest { name, suite: suite.to_string(), include }
}

/// Names that start with `pkg-` are package layers': one may be built by hand (as a
/// user is told to, who may not build it at start) only with the packages it stands for.
pub fn check_layer_name(request: &BuildRequest) -> Result<(), UserError> {
    if !request.name.as_str().starts_with("pkg-") {
        return Ok(());
    }
    let include = crate::spec::normalized_packages(&request.include)?;
    if layer_request(&request.suite, &[], &include).name == request.name {
        return Ok(());
    }
    Err(UserError::usage(format!(
        "'{}' is the name of a package layer, and not of these packages on {}",
        request.name, request.suite
    ))
    .hint(
        "pick a name that does not start with 'pkg-' (`mvm inspect VM` shows a VM's layer and its packages)",
    ))
}

/// The error for packages asked of a VM on a `--root DIR` tree.
pub fn not_on_a_tree() -> UserError {
    UserError::usage("packages need a VM on the host's /usr or an image, not --root DIR")
        .hint("install them into the directory tree itself, or drop the packages")
}

/// The package layer `config` runs on, when it declares packages.
pub fn layer_of(paths: &Paths, config: &VmConfig) -> anyhow::Result<Option<BuildRequest>> {
    if config.packages.is_empty() {
        return Ok(None);
    }
    let (suite, base) = match &config.root {
        RootModel::Host => (host_suite(), Vec::new()),
        RootModel::Image(image) => {
            let record = super::load(paths, image)?;
            (record.suite, record.include)
        }
        RootModel::Dir(_) => return Err(not_on_a_tree().into()),
    };
    // As read from a vm.toml its owner may have edited since create.
    Ok(Some(layer_request(&suite, &base, &crate::spec::normalized_packages(&config.packages)?)))
}

/// Image `layer`'s record, when it is built and holds what its name stands for.
fn built(paths: &Paths, layer: &BuildRequest) -> anyhow::Result<Option<super::ImageRecord>> {
    let record = match super::load(paths, &layer.name) {
        Ok(record) => record,
        Err(error) if crate::error::exit_code_of(&error) == crate::error::ExitCode::NotFound => {
            return Ok(None)
        }
        Err(error) => return Err(error),
    };
    if record.suite != layer.suite || crate::spec::normalized_packages(&record.include)? != layer.include {
        return Err(UserError::conflict(format!(
            "image {} holds other packages than its name stands for ({})",
            layer.name,
            record.include.join(",")
        ))
        .hint(format!("remove it with `sudo mvm image rm {}`; the next start builds it right", layer.name))
        .into());
    }
    Ok(Some(record))
}

/// Whether `config`'s VM boots the host's `/usr` (and so gets a copy of its `/etc`): on
/// the host's root model with no packages, which would make it a package layer's.
pub fn on_host_usr(config: &VmConfig) -> bool {
    config.root == RootModel::Host && config.packages.is_empty()
}

/// What `config`'s VM boots: its package layer's image when it declares packages, else
/// its root.
pub fn effective_root(paths: &Paths, config: &VmConfig) -> anyhow::Result<RootModel> {
    Ok(match layer_of(paths, config)? {
        Some(layer) => RootModel::Image(layer.name),
        None => config.root.clone(),
    })
}

/// Like [`effective_root`], for a launch: the image must be there (root's alone), and a
/// package layer built and holding its packages.
pub fn launch_root(paths: &Paths, config: &VmConfig) -> anyhow::Result<RootModel> {
    match layer_of(paths, config)? {
        Some(layer) => match built(paths, &layer)? {
            Some(_) => Ok(RootModel::Image(layer.name)),
            None => Err(UserError::not_found(format!("the package layer {} is not built", layer.name))
                .hint(format!("`mvm start {}` builds it (as root)", config.name))
                .into()),
        },
        None => {
            if let RootModel::Image(image) = &config.root {
                super::load(paths, image)?;
            }
            Ok(config.root.clone())
        }
    }
}

/// Makes sure the package layer `config` runs on exists: says so when it was cached, or
/// builds it (root), showing progress. A user needs root to build one once.
pub fn ensure(
    paths: &Paths,
    config: &VmConfig,
    tools: impl FnOnce() -> anyhow::Result<super::build::BuildTools>,
) -> anyhow::Result<()> {
    let Some(layer) = layer_of(paths, config)? else { return Ok(()) };
    let packages = config.packages.join(", ");
    if built(paths, &layer)?.is_some() {
        eprintln!("using the cached package layer {} ({packages})", layer.name);
        return Ok(());
    }
    if !nix::unistd::geteuid().is_root() {
        return Err(UserError::needs_root(format!(
            "VM '{}' runs on a package layer ({packages}) that is not built yet, and only root builds them",
            config.name
        ))
        .hint(format!(
            "build it once with `sudo mvm image build {} --suite {} --include {}`; every VM with these packages then shares it",
            layer.name,
            layer.suite,
            layer.include.join(",")
        ))
        .into());
    }
    let tools = tools()?;
    let mut progress = super::build::Progress::new(&format!("the package layer {} ({packages})", layer.name));
    let result = super::build::build(paths, &layer, &tools, &mut |line| progress.line(line));
    progress.finish();
    let record = match result {
        Ok(record) => record,
        // Another start built it meanwhile (builds of one name take turns).
        Err(_) if built(paths, &layer).is_ok_and(|record| record.is_some()) => return Ok(()),
        Err(error) => return Err(error),
    };
    eprintln!(
        "built the package layer {} ({packages}) in {} s; VMs with the same packages share it",
        record.name, record.build_seconds
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn packages_are_checked_sorted_and_unique() {
        assert_eq!(
            crate::spec::normalized_packages(&strings(&["postgresql", "curl", "curl"])).unwrap(),
            ["curl", "postgresql"]
        );
        assert!(crate::spec::normalized_packages(&strings(&["--hook=x"])).is_err());
    }

    #[test]
    fn the_same_set_on_the_same_base_is_one_layer() {
        let one = layer_request("bookworm", &[], &strings(&["postgresql", "curl"]));
        let two = layer_request("bookworm", &strings(&["curl"]), &strings(&["postgresql"]));
        assert_eq!(one, two);
        assert!(one.name.as_str().starts_with("pkg-") && one.name.as_str().len() == 32, "{}", one.name);
        assert_eq!(one.include, ["curl", "postgresql"]);
        assert_ne!(one.name, layer_request("trixie", &[], &strings(&["postgresql", "curl"])).name);
        assert_ne!(one.name, layer_request("bookworm", &[], &strings(&["postgresql"])).name);
    }

    #[test]
    fn a_layer_name_is_built_only_with_its_packages() {
        let layer = layer_request("bookworm", &[], &strings(&["postgresql"]));
        assert!(check_layer_name(&layer).is_ok());
        let forged = BuildRequest { include: strings(&["postgresql", "evil"]), ..layer.clone() };
        assert!(check_layer_name(&forged).unwrap_err().to_string().contains("package layer"));
        let other = BuildRequest { name: "mine".parse().unwrap(), ..forged };
        assert!(check_layer_name(&other).is_ok());
    }

    /// A VM's first start builds its layer (a stand-in mmdebstrap here; `e2e_templates`
    /// builds real ones), the next finds it cached; a user may not build one.
    #[test]
    fn the_first_start_builds_the_layer_and_the_next_uses_it() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP the_first_start_builds_the_layer: builds are root's");
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path());
        let fake = dir.path().join("mmdebstrap");
        let calls = dir.path().join("calls");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\necho \"$@\" >> {}\nfor last; do :; done\nmkdir -p \"$last/etc\"\n",
                calls.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut config = crate::config::vm::tests::sample();
        config.packages = strings(&["postgresql"]);
        let Ok(mkfs) = crate::host::binaries::Tool::MkfsExt4.find(&Default::default()) else {
            eprintln!("SKIP the_first_start_builds_the_layer: no mkfs.ext4");
            return;
        };
        let tools = super::super::build::BuildTools { mmdebstrap: fake.clone(), mkfs };
        ensure(&paths, &config, || Ok(tools.clone())).unwrap();
        let layer = layer_of(&paths, &config).unwrap().unwrap();
        assert!(super::super::load(&paths, &layer.name).is_ok(), "the layer was not built");
        assert!(std::fs::read_to_string(&calls).unwrap().contains("--include=postgresql"));
        ensure(&paths, &config, || panic!("a cached layer was built again")).unwrap();
        assert_eq!(std::fs::read_to_string(&calls).unwrap().lines().count(), 1);
        assert_eq!(launch_root(&paths, &config).unwrap(), RootModel::Image(layer.name.clone()));
        // A layer that holds other packages than its name says is never used.
        let record = super::super::image_dir(&paths, &layer.name).join(super::super::RECORD);
        let text = std::fs::read_to_string(&record).unwrap().replace("postgresql", "evil");
        std::fs::write(&record, text).unwrap();
        assert!(launch_root(&paths, &config).unwrap_err().to_string().contains("holds other packages"));
    }

    #[test]
    fn a_directory_root_takes_no_packages() {
        let mut config = crate::config::vm::tests::sample();
        config.root = RootModel::Dir("/srv/tree".into());
        let error = layer_of(&Paths::under(std::path::Path::new("/nonexistent")), &config).unwrap_err();
        assert!(error.to_string().contains("not --root DIR"), "{error}");
        config.root = RootModel::Host;
        config.packages.clear();
        assert!(layer_of(&Paths::under(std::path::Path::new("/nonexistent")), &config).unwrap().is_none());
    }
}
