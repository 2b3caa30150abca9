//! `switch serve`, the real binary, as a child process on its embedded defaults: on ports the OS
//! picks (read from what it prints), its output in a log file beside its data, SIGKILLed when
//! dropped.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Served {
    pub child: Child,
    /// The mutual-TLS port (PSPs and the operator).
    pub grpc: SocketAddr,
    /// The operator HTTP port (metrics, dashboard).
    pub operator: SocketAddr,
}

impl Served {
    /// Starts `switch serve --data DATA`, logging to `switch.log` in DATA's parent, and returns
    /// once its node leads and serves the switch (it logs so). Output goes to a file, not a
    /// pipe: a pipe nobody reads any more would fail the switch's later writes.
    pub fn start(data: &Path) -> Served {
        let parent = data.parent().expect("the data directory has a parent");
        let log_path = parent.join("switch.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_switch"))
            .args(["serve", "--data"])
            .arg(data)
            .args(["--listen", "127.0.0.1:0", "--operator-listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0"])
            .args(["--peer-listen", "127.0.0.1:0"])
            .current_dir(parent)
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start switch serve");
        // Placeholders until the switch prints its ports: the value owns the child from the start,
        // so a start that fails below still kills it on drop.
        let unbound = SocketAddr::from(([0, 0, 0, 0], 0));
        let mut served = Served { child, grpc: unbound, operator: unbound };
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let printed = |prefix: &str, end: char| {
                let line = text.lines().find_map(|line| line.strip_prefix(prefix))?;
                line.split(end).next()?.parse::<SocketAddr>().ok()
            };
            // Ready once its node leads (a cluster of one, at once) and serves the switch.
            if text.lines().any(|line| line.contains("leading: serving the switch")) {
                served.grpc = printed("switch listening on ", ' ').expect("the mutual-TLS address");
                served.operator = printed("dashboard   http://", '/').expect("the operator address");
                return served;
            }
            let exited = served.child.try_wait().expect("child status");
            assert!(
                exited.is_none() && started.elapsed() < Duration::from_secs(60),
                "switch serve did not start:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no shutdown, no flush; what is durable is what the ledger fsynced.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
