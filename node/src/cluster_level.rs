//! Raising the cluster's op level (`domain::levels`) once every member can
//! apply it. While this node leads and the applied level is below its own
//! build's, it asks every member (voters and learners) over the Raft port
//! which level its build applies, once a second; when all answer with at
//! least L above the cluster's level, it proposes `SetClusterLevel { L }`
//! (request id `cluster-level-L`: a second leader proposing the same is a
//! replay). A member that is down or runs an older build holds the level
//! where it is — never a reason to refuse anything but the new operations.
//!
//! Touches: the Raft metrics (membership), the members' Raft ports through
//! [`App::member_op_level`], and the write path ([`App::write`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::app::{App, Origin};
use crate::domain::Op;
use crate::types::NodeId;

/// How often the leader looks while the level can still rise.
const CHECK_INTERVAL_MS: u64 = 1_000;

/// What the leader last heard from each member: its build's op level, or
/// why it could not tell. Shown by the cluster status.
#[derive(Debug, Clone, Default)]
pub struct Heard {
    pub members: BTreeMap<NodeId, Result<u32, String>>,
}

pub type Shared = Arc<Mutex<Heard>>;

/// Asks every member once and raises the level if all allow it. Returns
/// the level set, if any. Only the leader acts.
pub async fn raise_once(app: &App, heard: &Shared) -> Result<Option<u32>, String> {
    let m = app.metrics();
    if m.current_leader != Some(app.id) || m.state != openraft::ServerState::Leader {
        return Ok(None);
    }
    let now = app.cluster_level().map_err(|e| e.message)?;
    let own = app.config.build_op_level();
    if now >= own {
        return Ok(None);
    }
    let members: Vec<(NodeId, crate::types::NodeInfo)> = m
        .membership_config
        .membership()
        .nodes()
        .map(|(id, n)| (*id, n.clone()))
        .collect();
    let mut answers = BTreeMap::new();
    for (id, info) in &members {
        answers.insert(*id, app.member_op_level(*id, info).await);
    }
    let lowest = answers.values().try_fold(own, |low, a| match a {
        Ok(level) => Some(low.min(*level)),
        Err(_) => None,
    });
    if let Ok(mut h) = heard.lock() {
        h.members = answers;
    }
    let Some(target) = lowest.filter(|t| *t > now) else {
        return Ok(None);
    };
    let origin = Origin {
        operator: "billdb".into(),
        branch: String::new(),
        channel: "ops".into(),
    };
    let (outcome, index) = app
        .write(
            format!("cluster-level-{target}"),
            origin,
            Op::SetClusterLevel { level: target },
        )
        .await
        .map_err(|e| e.message)?;
    tracing::info!(
        from = now,
        to = target,
        log_index = index,
        ?outcome,
        "cluster op level raised: every member applies level {target}"
    );
    Ok(Some(target))
}

/// The leader's loop: [`raise_once`] every second while the level can rise.
pub fn spawn(app: App, heard: Shared) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(CHECK_INTERVAL_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = raise_once(&app, &heard).await {
                tracing::debug!(error = %e, "cluster op level not raised this time");
            }
        }
    });
}
