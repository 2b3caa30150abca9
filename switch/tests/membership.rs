//! Replacing a node of a running replicated switch, with real `switch serve` processes on
//! loopback and the operator's own commands (`switch cluster add` and `remove`), while a PSP pays
//! without pause (`common::payer`).
//!
//! A follower's machine loses its disk: the node is killed and its data wiped, and it comes back
//! on the same machine and addresses under a new id, configured with the current members (not
//! itself), so it waits to be added. `switch cluster add`, sent to a follower (it follows
//! NOT_LEADER to the leader), makes it a learner that catches up from a snapshot of the ledger
//! plus the log (the leader has purged the start of its log, so the log alone cannot do), then a
//! voter; `switch cluster remove` takes the dead id out, and that id is refused for ever after.
//! Then the leader is killed: the other old node and the new one are the only quorum, so the
//! cluster electing a leader and serving again proves the new node votes. At the end every
//! acknowledged payment is completed, none paid twice, balances sum to zero, and the three nodes'
//! ledgers have the same head and accounts.

mod common;

use std::time::Duration;

use common::pay;
use common::payer::Payer;
use common::processes::{ProcessCluster, Setup, WAIT};
use switch::tls::DevelopmentCa;

/// Payments acknowledged after each step: the cluster serves throughout.
const ACKED_PER_STEP: usize = 30;
/// Entries between snapshots: small, so that the leader snapshots and purges its log's start
/// within a short test (it keeps `cluster::purge::KEEP_ENTRIES` below the purge point).
const SNAPSHOT_EVERY_ENTRIES: u64 = 64;
/// The id the wiped node rejoins under.
const NEW_ID: u64 = 4;
const FUNDS: u64 = 1_000_000_000;
const AMOUNT: u64 = 7;

/// Runs `switch cluster <args>` with the development CA's `admin` operator certificate (given
/// as files, as a deployment's own would be), against `server`: (succeeded, stdout, stderr).
async fn cluster_command(
    cluster: &ProcessCluster,
    server: std::net::SocketAddr,
    args: &[String],
) -> (bool, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_switch"));
    let ca = DevelopmentCa::new(cluster.dir.path().join("ca"));
    let admin = ca.operator("admin");
    command.arg("cluster").args(args).args(["--server", &format!("https://{server}")]);
    command.arg("--cert").arg(admin.certificate).arg("--key").arg(admin.key).arg("--ca").arg(ca.ca_certificate());
    let output = tokio::time::timeout(WAIT, tokio::task::spawn_blocking(move || command.output()))
        .await
        .expect("the command ends in time")
        .expect("the command's thread")
        .expect("switch cluster runs");
    let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
    (output.status.success(), text(output.stdout), text(output.stderr))
}

/// Waits until the leader's `GET /cluster` satisfies `condition`; that status.
async fn leader_status(
    cluster: &ProcessCluster,
    what: &str,
    condition: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let leader = cluster.leader().await;
        if let Some(status) = cluster.status(leader).await.filter(|status| condition(status)) {
            return status;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: never so; {}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ids(value: &serde_json::Value) -> Vec<u64> {
    let mut ids: Vec<u64> =
        value.as_array().map(|ids| ids.iter().filter_map(serde_json::Value::as_u64).collect()).unwrap_or_default();
    ids.sort_unstable();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_follower_rejoins_under_a_new_id_from_a_snapshot_while_the_cluster_serves() {
    let options = format!("snapshot_every_entries = {SNAPSHOT_EVERY_ENTRIES}\n");
    let mut cluster = ProcessCluster::start_configured(Setup::direct(3), &options);
    let first = cluster.leader().await;
    let (mut bank_a, _bank_b) = cluster.endpoint(first).payer_and_payee(0, FUNDS).await;
    bank_a.payments.pay(pay(1, "ana@bank-a", "bo@bank-b", AMOUNT)).await.expect("a first payment");
    let payer = Payer::start(cluster.view(), first, 2, AMOUNT);
    let served = |what: &'static str| payer.served(payer.count(), ACKED_PER_STEP, |_| true, what);

    // The leader has snapshotted and purged the start of its log: a new node cannot be sent
    // the log from its first entry, only a snapshot.
    leader_status(&cluster, "the leader purged its log", |status| status["purged_index"].as_u64() > Some(0)).await;

    // A follower's machine loses its disk.
    let leader = cluster.leader().await;
    let victim = (0..3).find(|slot| *slot != leader).expect("a follower");
    let old_id = cluster.ids[victim];
    cluster.kill(victim);
    served("with a follower down").await;
    cluster.rejoin_wiped(victim, NEW_ID);
    // Configured with the members, not itself, it forms nothing and waits to be added (the
    // leader's calls to the old id at this address are refused: it is another node).
    let waiting = cluster.status_when_up(victim).await;
    assert_eq!(waiting["node_id"], NEW_ID);
    assert_eq!((ids(&waiting["voters"]), waiting["leader"].clone()), (vec![], serde_json::Value::Null), "{waiting}");
    served("with the new node waiting").await;

    // Added through a follower: the command follows NOT_LEADER to the leader.
    let leader = cluster.leader().await;
    let other = (0..3).find(|slot| *slot != leader && *slot != victim).expect("the other follower");
    let (peer, psp) = (cluster.ports[victim].peer.to_string(), cluster.ports[victim].psp.to_string());
    let add = ["add", "--id", &NEW_ID.to_string(), "--peer", &peer, "--psp", &psp].map(String::from);
    let (added, stdout, stderr) = cluster_command(&cluster, cluster.ports[other].psp, &add).await;
    assert!(added, "switch cluster add failed:\n{stdout}\n{stderr}\n{}", cluster.logs());
    assert!(stdout.contains(&format!("node {NEW_ID:<4} voter")), "{stdout}");
    // It caught up from a snapshot (then the log), and it is a voter.
    let log = std::fs::read_to_string(cluster.log_path(victim)).expect("the new node's log");
    assert!(log.contains("installed a snapshot from the leader"), "no snapshot installed:\n{log}");
    let joined = cluster.status(victim).await.expect("the new node answers");
    assert!(joined["purged_index"].as_u64() > Some(0), "its log starts after a snapshot: {joined}");
    assert!(ids(&joined["voters"]).contains(&NEW_ID), "{joined}");
    served("after the add").await;

    // The dead node's id leaves the cluster, and is never accepted again.
    let remove = ["remove", "--id", &old_id.to_string()].map(String::from);
    let (removed, stdout, stderr) = cluster_command(&cluster, cluster.ports[other].psp, &remove).await;
    assert!(removed, "switch cluster remove failed:\n{stdout}\n{stderr}");
    assert!(!stdout.contains(&format!("node {old_id} ")), "{stdout}");
    let mut members: Vec<u64> = cluster.ids.clone();
    members.sort_unstable();
    let status = leader_status(&cluster, "the membership without the old id", |status| {
        ids(&status["voters"]) == members && ids(&status["learners"]).is_empty()
    })
    .await;
    assert_eq!(ids(&status["voters"]), members, "{status}");
    let again = ["add", "--id", &old_id.to_string(), "--peer", &peer, "--psp", &psp].map(String::from);
    let (reused, stdout, stderr) = cluster_command(&cluster, cluster.ports[other].psp, &again).await;
    assert!(!reused && stderr.contains("REASON_NODE_ID_TAKEN"), "a removed id was accepted:\n{stdout}\n{stderr}");
    served("after the remove").await;

    // The new node votes: without the leader, the other old node and the new one are the only
    // quorum of the three, so a leader elected and payments served again need its vote and its
    // acknowledgements.
    let leader = cluster.leader().await;
    cluster.kill(leader);
    let elected = cluster.leader().await;
    assert_ne!(elected, leader, "a stopped node leads");
    served("after the leader was killed").await;
    cluster.restart(leader);

    let mut acked = payer.stop().await;
    acked.push(1);
    println!("{} payments acknowledged across the replacement", acked.len());
    cluster.converged().await;
    cluster.assert_acknowledged_paid_once(&acked, AMOUNT, FUNDS).await;
    cluster.stop_and_assert_same_ledgers();
}
