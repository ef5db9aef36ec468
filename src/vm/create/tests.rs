//! Tests of `vm::create`.

use std::collections::BTreeMap;

use super::*;
use crate::config::vm::{Project, RootModel};
use crate::spec::Volume;

fn limits() -> HostLimits {
    HostLimits { cpus: 4, memory_mib: Some(8192) }
}

fn args(name: &str) -> CreateArgs {
    CreateArgs { name: name.to_string(), root: "host".to_string(), ..CreateArgs::default() }
}

fn setup() -> (tempfile::TempDir, Paths) {
    let dir = tempfile::tempdir().unwrap();
    let paths = Paths::under(dir.path());
    (dir, paths)
}

#[test]
fn builds_the_expected_config() {
    let (dir, paths) = setup();
    let project = dir.path().join("project");
    std::fs::create_dir(&project).unwrap();
    let args = CreateArgs {
        project: Some(project.clone()),
        cpus: Some(3),
        memory: Some("2G".into()),
        ports: vec!["8080:3000".into(), "5353:53/udp".into()],
        persist: true,
        volumes: vec!["data:/data".into()],
        env: vec!["A=1".into()],
        hypervisor: Some(Hypervisor::Qemu),
        ephemeral_system: true,
        offline: true,
        no_auto_ports: true,
        ignore_ports: vec!["5432".into(), "9000-9100".into()],
        ..args("web")
    };
    let config = create(&args, &paths, &HostConfig::default(), limits()).unwrap();
    let expected = VmConfig {
        name: "web".parse().unwrap(),
        created_at: config.created_at,
        hypervisor: Hypervisor::Qemu,
        cpus: 3,
        memory_mib: 2048,
        disk_mib: Some(20 * 1024),
        root: RootModel::Host,
        ephemeral_system: true,
        kernel: None,
        offline: true,
        host_access: false,
        auto_ports: Some(false),
        auto_ports_ignore: vec!["5432".parse().unwrap(), "9000-9100".parse().unwrap()],
        env: BTreeMap::from([("A".into(), "1".into())]),
        project: Some(Project {
            path: project.canonicalize().unwrap(),
            mount: MountMode::Overlay,
            persist: true,
        }),
        network: HostConfig::default().address_pool().unwrap().vm(0).unwrap(),
        ports: vec!["8080:3000".parse().unwrap(), "5353:53/udp".parse().unwrap()],
        volumes: vec!["data:/data".parse().unwrap()],
        packages: vec![],
        processes: vec![],
    };
    assert_eq!(config, expected);
    assert_eq!(store::load(&paths, &config.name).unwrap(), expected);
    assert!(paths.vm_dir(&config.name).join("volumes/data").is_dir());
}

#[test]
fn uses_host_defaults() {
    let (_dir, paths) = setup();
    let host = HostConfig::parse("[defaults]\ncpus = 8\nmemory = \"512M\"\nhypervisor = \"qemu\"").unwrap();
    let config = create(&args("web"), &paths, &host, limits()).unwrap();
    assert_eq!((config.cpus, config.memory_mib, config.hypervisor), (4, 512, Hypervisor::Qemu));
}

#[test]
fn allocates_the_lowest_free_index() {
    let (_dir, paths) = setup();
    let host = HostConfig::default();
    for name in ["a", "b", "c"] {
        create(&args(name), &paths, &host, limits()).unwrap();
    }
    std::fs::remove_dir_all(paths.state_dir.join("b")).unwrap();
    assert_eq!(create(&args("d"), &paths, &host, limits()).unwrap().network.index, 1);
    assert_eq!(create(&args("e"), &paths, &host, limits()).unwrap().network.index, 3);
}

#[test]
fn refuses_a_full_pool() {
    let (_dir, paths) = setup();
    let host = HostConfig::parse("[network]\npool = \"10.9.0.0/29\"\nsubnet_prefix = 30").unwrap();
    create(&args("a"), &paths, &host, limits()).unwrap();
    create(&args("b"), &paths, &host, limits()).unwrap();
    let error = create(&args("c"), &paths, &host, limits()).unwrap_err();
    assert!(format!("{error:#}").contains("is full (2 VMs)"), "{error:#}");
}

#[test]
fn removes_stale_staging_dirs() {
    let (_dir, paths) = setup();
    std::fs::create_dir_all(paths.state_dir.join(".staging-web-1/log")).unwrap();
    create(&args("web"), &paths, &HostConfig::default(), limits()).unwrap();
    assert!(!paths.state_dir.join(".staging-web-1").exists());
}

#[test]
fn a_template_fills_in_what_the_command_line_leaves_out() {
    let (_dir, paths) = setup();
    let request = CreateArgs {
        template: Some("django-postgres".into()),
        memory: Some("512M".into()),
        ports: vec!["9000:8000".into()],
        volumes: vec!["db:/var/lib/mvm/postgresql".into()],
        env: vec!["PGPASSWORD=secret".into()],
        ..args("shop")
    };
    let config = create(&request, &paths, &HostConfig::default(), limits()).unwrap();
    assert_eq!((config.cpus, config.memory_mib), (2, 512));
    let names: Vec<&str> = config.processes.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["web", "postgres"]);
    assert_eq!(config.ports.len(), 2, "{:?}", config.ports);
    let postgres = config.ports.iter().find(|p| p.guest == 5432).unwrap();
    assert!(postgres.host != 0 && postgres.host != 9000, "{postgres:?}");
    assert!(config.ports.iter().any(|p| p.host == 9000 && p.guest == 8000), "{:?}", config.ports);
    assert_eq!(config.volumes, vec!["db:/var/lib/mvm/postgresql".parse::<Volume>().unwrap()]);
    assert_eq!(config.env["PGPASSWORD"], "secret");
    assert_eq!(config.env["PGUSER"], "postgres");

    // A second VM from the template gets other host ports than the first one's.
    let second = create(
        &CreateArgs { template: Some("postgres".into()), ..args("db") },
        &paths,
        &HostConfig::default(),
        limits(),
    )
    .unwrap();
    assert_ne!(second.ports[0].host, postgres.host);
    assert_eq!(second.ports[0].guest, 5432);
}

#[test]
fn template_cpus_are_capped_by_the_host_but_explicit_ones_are_not() {
    let (dir, paths) = setup();
    std::fs::create_dir(dir.path().join("templates")).unwrap();
    std::fs::write(dir.path().join("templates/big.toml"), "description = \"big\"\ncpus = 64\n").unwrap();
    let host = HostConfig::default();
    let big = create(&CreateArgs { template: Some("big".into()), ..args("a") }, &paths, &host, limits());
    assert_eq!(big.unwrap().cpus, 4);
    let error = create(&CreateArgs { cpus: Some(64), ..args("b") }, &paths, &host, limits()).unwrap_err();
    assert!(error.to_string().contains("outside 1-4"), "{error}");
    let error = create(&CreateArgs { template: Some("nope".into()), ..args("c") }, &paths, &host, limits())
        .unwrap_err();
    assert!(format!("{error:#}").contains("there is no template \"nope\""), "{error:#}");
    assert!(!paths.vm_dir(&"c".parse().unwrap()).exists());
}

#[test]
fn refuses_socket_paths_past_the_kernel_limit() {
    let dir = tempfile::tempdir().unwrap();
    let paths = Paths::under(&dir.path().join("x".repeat(60)));
    let error = create(&args(&"a".repeat(32)), &paths, &HostConfig::default(), limits()).unwrap_err();
    assert!(error.to_string().contains("longer than the kernel's limit"), "{error}");
    assert!(!paths.state_dir.exists());
}
