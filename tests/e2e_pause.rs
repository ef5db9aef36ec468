//! End-to-end tier: instant re-entry. A paused VM keeps its processes and an open TCP
//! connection, uses no host CPU, and runs again on `mvm resume` or on the next
//! `mvm shell`, its wall clock set to the host's.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::e2e::begin;

/// User plus system CPU time of process `pid`, in clock ticks.
fn cpu_ticks(pid: u64) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn a_paused_vm_keeps_its_processes_and_connections_and_resumes_with_the_right_time() {
    let test = "a_paused_vm_keeps_its_processes_and_connections_and_resumes_with_the_right_time";
    let Some((_serial, lab)) = begin(test) else { return };
    lab.mvm(&["create", "p", "--port", "18090:9000"]).ok();
    lab.mvm(&["start", "p"]).ok();
    let echo =
        "import socket\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                s.bind(('0.0.0.0', 9000))\ns.listen()\nc, _ = s.accept()\nf = c.makefile('rwb', 0)\n\
                for line in f:\n    f.write(line)";
    let started = lab.sh("p", &format!("setsid python3 -c \"{echo}\" >/dev/null 2>&1 < /dev/null & echo $!"));
    let server = started.ok().trim().to_string();
    let mut stream = lab.host.run(|| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match TcpStream::connect("127.0.0.1:18090") {
                Ok(stream) => break stream,
                Err(error) if Instant::now() > deadline => panic!("no connection: {error}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    });
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut round_trip = |text: &str| {
        stream.write_all(format!("{text}\n").as_bytes()).unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        line.trim().to_string()
    };
    assert_eq!(round_trip("before"), "before");

    // A guest clock gone wrong (guest root set it back to 2001) is put right by a resume.
    lab.sh("p", "date -s @1000000000 >/dev/null").ok();
    let paused = lab.mvm(&["pause", "p"]);
    assert!(paused.ok().contains("paused in"), "{}", paused.stdout);
    let list: serde_json::Value = serde_json::from_str(lab.mvm(&["list", "--json"]).ok()).unwrap();
    assert_eq!(list[0]["state"], "paused");
    // Its host CPU use while paused: the hypervisor's ticks over a few seconds.
    let status: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(lab.sandbox.run_dir().join("p/status.json")).unwrap())
            .unwrap();
    let hypervisor = status["hypervisor_pid"].as_u64().unwrap();
    let before = cpu_ticks(hypervisor);
    std::thread::sleep(Duration::from_secs(4));
    let used = cpu_ticks(hypervisor) - before;
    eprintln!("paused hypervisor CPU: {used} ticks in 4 s");
    assert!(used <= 8, "a paused VM used {used} ticks of CPU in 4 s");

    // The next shell resumes it: the process is there, and the clock is the host's.
    let checked = lab.sh("p", &format!("kill -0 {server} && date +%s"));
    let guest_time: i64 = checked.ok().trim().parse().unwrap();
    let host_time =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((guest_time - host_time).abs() <= 2, "guest clock {guest_time}, host {host_time}");
    let list: serde_json::Value = serde_json::from_str(lab.mvm(&["list", "--json"]).ok()).unwrap();
    assert_eq!(list[0]["state"], "running");
    // The connection opened before the pause still carries data both ways.
    assert_eq!(round_trip("after"), "after");

    // Pause and resume by name, twice over: the same connection survives.
    lab.mvm(&["pause", "p"]).ok();
    assert!(lab.mvm(&["resume", "p"]).ok().contains("resumed in"));
    assert_eq!(round_trip("again"), "again");
    // Forwards still make themselves after pauses: a new guest listener answers the host.
    lab.sh("p", "setsid python3 -m http.server 7700 --bind 127.0.0.1 >/dev/null 2>&1 < /dev/null &").ok();
    let forwarded = lab.host.run(|| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if TcpStream::connect("127.0.0.1:7700").is_ok_and(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                s.write_all(b"GET / HTTP/1.0\r\n\r\n").is_ok() && s.read(&mut [0u8; 4]).is_ok_and(|n| n > 0)
            }) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    });
    let log =
        std::fs::read_to_string(lab.sandbox.state_dir().join("p/log/supervisor.log")).unwrap_or_default();
    assert!(forwarded, "no automatic forward after the pauses; supervisor log:\n{log}");
    // A stop of a paused VM is still a graceful one.
    lab.mvm(&["pause", "p"]).ok();
    assert!(lab.mvm(&["stop", "p"]).ok().contains("stopped"));
    let list: serde_json::Value = serde_json::from_str(lab.mvm(&["list", "--json"]).ok()).unwrap();
    let log =
        std::fs::read_to_string(lab.sandbox.state_dir().join("p/log/supervisor.log")).unwrap_or_default();
    assert_eq!(list[0]["reason"], "stopped by mvm stop", "supervisor log:\n{log}");
    lab.assert_nothing_left();
}
