//! `switch cluster status`: every node's place in the replicated switch, read from each node's
//! operator port (`GET /cluster`, `leadership::ClusterStatus`) and shown as one table: role,
//! term, the leader it knows, its log, commit and apply indexes, and how far behind the leader
//! it is (from the leader's own view of each follower); then the members as the leader knows
//! them.
//!
//! `switch cluster add` and `remove`: OperatorService.AddNode and RemoveNode over the operator's
//! mutual TLS, sent to the leader (following NOT_LEADER), and sent again while the switch answers
//! MEMBERSHIP_CHANGE_PENDING (a new node still catching up), up to `--wait-seconds`: both calls
//! carry on from where the change stands.

use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{describe, following_the_leader, Connection, Refused};
use crate::leadership::ClusterStatus;
use crate::proto::operator_service_client::OperatorServiceClient;
use crate::proto::{self, Reason};

/// A membership change to ask the leader for.
#[derive(Clone, Debug)]
pub enum Change {
    Add(proto::AddNodeRequest),
    Remove(proto::RemoveNodeRequest),
}

/// Asks the leader for `change`, again while it is pending, until `wait` has passed; prints the
/// membership the leader answers.
pub async fn change(connection: Connection, change: Change, wait: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let attempt = following_the_leader(connection.clone(), |connection| {
            let change = change.clone();
            async move {
                let mut operator = OperatorServiceClient::new(connection.channel().await?);
                let membership = match change {
                    Change::Add(request) => operator.add_node(request).await,
                    Change::Remove(request) => operator.remove_node(request).await,
                };
                print!("{}", members(&membership.map_err(describe)?.into_inner()));
                Ok(())
            }
        })
        .await;
        let Err(error) = attempt else { return Ok(()) };
        let pending =
            error.downcast_ref::<Refused>().filter(|refused| refused.reason == Some(Reason::MembershipChangePending));
        match pending {
            Some(refused) if tokio::time::Instant::now() < deadline => {
                eprintln!("{}; asking again", refused.message);
                let pause = Duration::from_millis(refused.retry_after_ms.unwrap_or(1_000).clamp(100, 10_000));
                tokio::time::sleep(pause).await;
            }
            _ => return Err(error),
        }
    }
}

/// The membership, one node a line.
fn members(membership: &proto::ClusterMembership) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for node in &membership.nodes {
        let role = if node.voter { "voter" } else { "learner" };
        let _ =
            writeln!(out, "node {:<4} {role:<8} peer {:<22} psp {}", node.node_id, node.peer_address, node.psp_address);
    }
    out
}

/// Longest a node may take to answer.
const ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Reads `/cluster` from each operator address (host:port) and prints the table. Fails when no
/// node answered or no answering node leads, so a script can tell a healthy cluster.
pub async fn status(nodes: &[String]) -> anyhow::Result<()> {
    let mut answers = Vec::new();
    for node in nodes {
        let answer = tokio::time::timeout(ANSWER_WAIT, fetch(node)).await.unwrap_or_else(|_| bail!("no answer"));
        answers.push((node.as_str(), answer));
    }
    print!("{}", table(&answers));
    let statuses: Vec<&ClusterStatus> = answers.iter().filter_map(|(_, answer)| answer.as_ref().ok()).collect();
    if statuses.is_empty() {
        bail!("no node answered");
    }
    if !statuses.iter().any(|status| status.role == "leader") {
        bail!("no answering node leads (an election, or no quorum)");
    }
    Ok(())
}

/// One node's status over plain HTTP/1.1.
async fn fetch(address: &str) -> anyhow::Result<ClusterStatus> {
    let mut stream =
        tokio::net::TcpStream::connect(address).await.with_context(|| format!("connecting to {address}"))?;
    let request = format!("GET /cluster HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8(response).context("the answer is not text")?;
    let (head, body) = text.split_once("\r\n\r\n").context("not an HTTP answer")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{}", head.lines().next().unwrap_or("no status line"));
    }
    serde_json::from_str(body).context("not a cluster status (is this the operator port?)")
}

fn table(answers: &[(&str, anyhow::Result<ClusterStatus>)]) -> String {
    use std::fmt::Write;
    // Lag as the leader sees it: entries each follower is behind its log.
    let leader = answers.iter().filter_map(|(_, answer)| answer.as_ref().ok()).find(|status| status.role == "leader");
    let lag_of = |node: u64| -> String {
        let Some(leader) = leader else { return "?".into() };
        if leader.node_id == node {
            return "-".into();
        }
        leader
            .replication
            .iter()
            .find(|follower| follower.node_id == node)
            .and_then(|follower| follower.lag)
            .map_or_else(|| "?".into(), |lag| lag.to_string())
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<22} {:>4} {:<10} {:>6} {:>6} {:>10} {:>10} {:>10} {:>10} {:>6}",
        "operator address", "node", "role", "term", "leader", "last log", "committed", "applied", "snapshot", "lag"
    );
    for (address, answer) in answers {
        match answer {
            Ok(status) => {
                let leader = status.leader.map_or_else(|| "none".into(), |leader| leader.to_string());
                let _ = writeln!(
                    out,
                    "{:<22} {:>4} {:<10} {:>6} {:>6} {:>10} {:>10} {:>10} {:>10} {:>6}",
                    address,
                    status.node_id,
                    status.role,
                    status.term,
                    leader,
                    status.last_log_index,
                    status.committed_index,
                    status.applied_index,
                    status.snapshot_index,
                    lag_of(status.node_id),
                );
            }
            Err(error) => {
                let _ = writeln!(out, "{address:<22} unreachable: {error:#}");
            }
        }
    }
    if let Some(leader) = leader {
        let list = |ids: &[u64]| {
            if ids.is_empty() {
                "none".to_string()
            } else {
                ids.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
            }
        };
        let _ = writeln!(
            out,
            "members (node {}): voters {}; learners {}",
            leader.node_id,
            list(&leader.voters),
            list(&leader.learners)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leadership::FollowerProgress;

    fn node(id: u64, role: &str) -> ClusterStatus {
        ClusterStatus {
            node_id: id,
            role: role.into(),
            term: 3,
            leader: Some(1),
            last_log_index: 50,
            committed_index: 50,
            applied_index: 50,
            ..ClusterStatus::default()
        }
    }

    #[test]
    fn the_table_shows_each_node_and_the_lag_the_leader_sees() {
        let mut leader = node(1, "leader");
        leader.replication = vec![FollowerProgress { node_id: 2, matched_index: Some(42), lag: Some(8) }];
        leader.voters = vec![1, 2, 3];
        leader.learners = vec![4];
        let answers = vec![
            ("127.0.0.1:9464", Ok(leader)),
            ("127.0.0.1:9465", Ok(node(2, "follower"))),
            ("127.0.0.1:9466", Err(anyhow::anyhow!("connection refused"))),
        ];
        let table = table(&answers);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        assert_eq!(lines[4], "members (node 1): voters 1, 2, 3; learners 4", "{table}");
        assert!(lines[1].contains("leader") && lines[1].trim_end().ends_with('-'), "{table}");
        assert!(lines[2].contains("follower") && lines[2].trim_end().ends_with(" 8"), "{table}");
        assert!(lines[3].contains("unreachable: connection refused"), "{table}");
    }
}
