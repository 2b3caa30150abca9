//! `switch cluster status`: every node's place in the replicated switch, read from each node's
//! operator port (`GET /cluster`, `leadership::ClusterStatus`) and shown as one table: role,
//! term, the leader it knows, its log, commit and apply indexes, and how far behind the leader
//! it is (from the leader's own view of each follower).

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::leadership::ClusterStatus;

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
        let answers = vec![
            ("127.0.0.1:9464", Ok(leader)),
            ("127.0.0.1:9465", Ok(node(2, "follower"))),
            ("127.0.0.1:9466", Err(anyhow::anyhow!("connection refused"))),
        ];
        let table = table(&answers);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[1].contains("leader") && lines[1].trim_end().ends_with('-'), "{table}");
        assert!(lines[2].contains("follower") && lines[2].trim_end().ends_with(" 8"), "{table}");
        assert!(lines[3].contains("unreachable: connection refused"), "{table}");
    }
}
