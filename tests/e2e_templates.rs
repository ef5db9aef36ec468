//! End-to-end tier: every built-in template boots, and its service answers on the host
//! through the port forward the template declares. The guest runs Debian's Node.js,
//! Django and PostgreSQL from the template's package layer, built with mmdebstrap from
//! Debian's archive (the host's network); the host has none of them, only the clients the
//! test checks with (curl, psql).

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::e2e::{begin, Lab};

/// The host port that VM `name` forwards to `guest_port`.
fn host_port(lab: &Lab, name: &str, guest_port: u16) -> String {
    let ports: Vec<serde_json::Value> =
        serde_json::from_str(lab.mvm(&["port", name, "--json"]).ok()).unwrap();
    let forward = ports.iter().find(|p| p["guest"] == guest_port).expect("the template forwards the port");
    forward["host"].to_string()
}

/// Runs `program args` in the lab's host namespace until it succeeds; returns its stdout.
fn until_ok(lab: &Lab, name: &str, within: Duration, program: &str, args: &[&str]) -> String {
    let deadline = Instant::now() + within;
    loop {
        let out = lab.host.command(program, args).env("PGPASSWORD", "postgres").output().unwrap();
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        if Instant::now() > deadline {
            let inspect: serde_json::Value =
                serde_json::from_str(&lab.mvm(&["inspect", name, "--json"]).stdout).unwrap_or_default();
            let mut logs = String::new();
            for process in inspect["processes"].as_array().into_iter().flatten() {
                let process = process["name"].as_str().unwrap_or_default();
                let log = lab.mvm(&["logs", name, "--process", process]).stdout;
                logs.push_str(&format!("--- process {process}:\n{log}\n"));
            }
            panic!(
                "{program} {args:?} never succeeded: {}\n{inspect:#}\n{logs}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn curl(lab: &Lab, name: &str, port: &str) -> String {
    let url = format!("http://127.0.0.1:{port}/");
    until_ok(lab, name, Duration::from_secs(240), "curl", &["-sf", "--max-time", "5", &url])
}

fn psql(lab: &Lab, name: &str, port: &str, sql: &str) -> String {
    let args = ["-h", "127.0.0.1", "-p", port, "-U", "postgres", "-tAc", sql];
    until_ok(lab, name, Duration::from_secs(240), "psql", &args).trim().to_string()
}

fn django_project(lab: &Lab, dir: &str) -> std::path::PathBuf {
    let project = lab.sandbox.mkdir(dir);
    support::django::write_project(&project);
    project
}

/// Creates VM `name` from `template`, builds its package layer with the host's network
/// (what its first start would do; the lab's namespace has none), and starts it, which
/// uses the layer cached.
fn create_from_template(lab: &Lab, name: &str, template: &str, project: Option<&Path>) {
    let mut args = vec!["create", name, "--template", template];
    if let Some(project) = project {
        args.extend(["--project", project.to_str().unwrap()]);
    }
    let out = lab.mvm(&args).ok().to_string();
    assert!(out.contains("runs process"), "{out}");
    let inspect: serde_json::Value =
        serde_json::from_str(lab.mvm(&["inspect", name, "--json"]).ok()).unwrap();
    let layer = &inspect["package_layer"];
    let image = layer["image"].as_str().expect("the template declares packages");
    if !layer["built"].as_bool().unwrap() {
        let include: Vec<&str> =
            layer["include"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
        let suite = layer["suite"].as_str().unwrap();
        let built =
            lab.sandbox.mvm(&["image", "build", image, "--suite", suite, "--include", &include.join(",")]);
        eprintln!("{}", built.ok().trim());
    }
    let started = lab.mvm(&["start", name]);
    started.ok();
    assert!(
        started.stderr.contains(&format!("using the cached package layer {image}")),
        "{}",
        started.stderr
    );
    // Nothing of it is the host's: the template's software is not on the host's /usr.
    assert!(!lab.sandbox.state_dir().join(name).join("files/etc").exists(), "the VM got the host's /etc");
}

/// The lab for `test`, when the clients it checks the service with are on the host.
fn lab_for(test: &str, programs: &[&str]) -> Option<(std::sync::MutexGuard<'static, ()>, Lab)> {
    if !programs.iter().all(|program| support::require_program(test, program))
        || !support::require_program(test, "mmdebstrap")
    {
        return None;
    }
    begin(test)
}

#[test]
fn node_template_serves_npm_start() {
    let Some((_serial, lab)) = lab_for("node_template_serves_npm_start", &["curl"]) else { return };
    let project = lab.sandbox.mkdir("shop");
    std::fs::write(project.join("package.json"), r#"{"name":"shop","scripts":{"start":"node server.js"}}"#)
        .unwrap();
    std::fs::write(
        project.join("server.js"),
        "require('http').createServer((q, r) => r.end(`node ${process.env.NODE_ENV} on ${process.env.PORT}\\n`))\n\
         .listen(process.env.PORT, process.env.HOST);\n",
    )
    .unwrap();
    create_from_template(&lab, "shop", "node", Some(&project));
    let port = host_port(&lab, "shop", 3000);
    assert_eq!(curl(&lab, "shop", &port), "node development on 3000\n");
    lab.mvm(&["stop", "shop"]).ok();
    lab.assert_nothing_left();
}

#[test]
fn django_template_migrates_and_serves() {
    let test = "django_template_migrates_and_serves";
    let Some((_serial, lab)) = lab_for(test, &["curl"]) else { return };
    let project = django_project(&lab, "blog");
    create_from_template(&lab, "blog", "django", Some(&project));
    let port = host_port(&lab, "blog", 8000);
    let page = curl(&lab, "blog", &port);
    assert!(page.contains("The install worked successfully"), "{page}");
    // `migrate` wrote its database into the VM's overlay, not into the project.
    assert!(lab.mvm(&["diff", "blog"]).ok().contains("A db.sqlite3"));
    assert!(!project.join("db.sqlite3").exists());
    lab.mvm(&["stop", "blog"]).ok();
    lab.assert_nothing_left();
}

#[test]
fn postgres_template_serves_and_keeps_its_data() {
    let test = "postgres_template_serves_and_keeps_its_data";
    let Some((_serial, lab)) = lab_for(test, &["psql"]) else { return };
    create_from_template(&lab, "db", "postgres", None);
    let port = host_port(&lab, "db", 5432);
    assert_eq!(psql(&lab, "db", &port, "select 40 + 2"), "42");
    psql(&lab, "db", &port, "create table kept (v text); insert into kept values ('still here')");
    // Inside the VM, psql finds the server from the template's [env] alone.
    assert_eq!(lab.mvm(&["shell", "db", "--", "psql", "-tAc", "select count(*) from kept"]).ok().trim(), "1");

    lab.mvm(&["restart", "db"]).ok();
    assert_eq!(psql(&lab, "db", &port, "select v from kept"), "still here");
    lab.mvm(&["stop", "db"]).ok();
    lab.assert_nothing_left();
}

#[test]
fn django_postgres_template_runs_both_services() {
    let test = "django_postgres_template_runs_both_services";
    let Some((_serial, lab)) = lab_for(test, &["curl", "psql"]) else { return };
    let project = django_project(&lab, "app");
    support::django::use_postgres(&project);
    create_from_template(&lab, "app", "django-postgres", Some(&project));
    let web = host_port(&lab, "app", 8000);
    let db = host_port(&lab, "app", 5432);
    assert!(curl(&lab, "app", &web).contains("The install worked successfully"));
    // The web process migrated into the database process.
    let applied: u32 = psql(&lab, "app", &db, "select count(*) from django_migrations").parse().unwrap();
    assert!(applied > 10, "{applied} migrations");
    lab.mvm(&["stop", "app"]).ok();
    lab.assert_nothing_left();
}
