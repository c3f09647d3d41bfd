//! Who may open one more connection on a public listener: the process's budget of file
//! descriptors, and each client address's share of it.
//!
//! Every connection from a client holds descriptors (the edge: the client's socket, its
//! connection to the load balancer and the load balancer's end of that), and the
//! listeners' connection caps add up to far more than the process may open. When the
//! process's table is full, everything fails at once: accepts, the APIs, health checks,
//! function starts. So public listeners draw from one [`Descriptors`] budget, the open-file
//! limit less a reserve, charging each connection what it will hold; over the budget a new
//! connection is closed as soon as it is accepted (the client sees its connection end and
//! can try another node), while the reserve keeps what is already established working:
//! their connections to targets, the Invoke and admin APIs, health checks and function
//! starts, which never draw from the budget. [`PerClient`] bounds one client address's
//! connections (an IPv4 address, an IPv6 /64), so that one client cannot spend the budget
//! alone. Refusals are counted (the accept loop logs them once per interval).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The process's budget of descriptors for client connections.
#[derive(Debug)]
pub struct Descriptors {
    budget: usize,
    reserve: usize,
    held: AtomicUsize,
    refused: AtomicU64,
}

impl Descriptors {
    /// A budget of `limit - reserve` descriptors.
    pub fn new(limit: usize, reserve: usize) -> Self {
        Self {
            budget: limit.saturating_sub(reserve),
            reserve,
            held: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// The budget of this process: its open-file limit (`RLIMIT_NOFILE`, soft) less
    /// `reserve`, or less the default reserve when `None`.
    pub fn of_this_process(reserve: Option<usize>) -> Self {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
        Self::new(limit, reserve.unwrap_or_else(|| default_reserve(limit)))
    }

    /// Takes `cost` descriptors from the budget, or `None` when that would overspend it.
    pub fn take(self: &Arc<Self>, cost: usize) -> Option<Taken> {
        let taken = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(cost).filter(|&after| after <= self.budget)
            })
            .is_ok();
        if taken {
            Some(Taken {
                descriptors: self.clone(),
                cost,
            })
        } else {
            self.refused.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// Descriptors client connections may hold.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Descriptors kept out of the budget.
    pub fn reserve(&self) -> usize {
        self.reserve
    }

    /// Descriptors client connections hold now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Connections refused because the budget was spent, since the start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// The reserve for an open-file limit of `limit`: an eighth of it, at least 256, at most
/// half (and 8 192 at most: that many serve every API, health check and function start).
pub fn default_reserve(limit: usize) -> usize {
    (limit / 8).clamp(256, 8192).min(limit / 2)
}

/// Descriptors a connection holds from the budget until dropped.
#[derive(Debug)]
pub struct Taken {
    descriptors: Arc<Descriptors>,
    cost: usize,
}

impl Drop for Taken {
    fn drop(&mut self) {
        self.descriptors.held.fetch_sub(self.cost, Ordering::AcqRel);
    }
}

/// The most connections one client address may hold on a listener set.
#[derive(Debug)]
pub struct PerClient {
    limit: usize,
    /// Open connections by client (IPv4 address or IPv6 /64), in shards so that accepts on
    /// different threads seldom meet.
    shards: [Mutex<HashMap<u128, usize>>; SHARDS],
    refused: AtomicU64,
}

const SHARDS: usize = 16;

impl PerClient {
    /// At most `limit` connections per client.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            refused: AtomicU64::new(0),
        }
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Connections refused because their client was at the limit, since the start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Counts one more connection of `client`, or `None` when it holds the limit already.
    pub fn take(self: &Arc<Self>, client: IpAddr) -> Option<ClientSlot> {
        let key = client_key(client);
        let mut shard = self.shard(key);
        let open = shard.entry(key).or_insert(0);
        if *open >= self.limit {
            drop(shard);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *open += 1;
        Some(ClientSlot {
            clients: self.clone(),
            key,
        })
    }

    /// Connections `client` holds now.
    pub fn open(&self, client: IpAddr) -> usize {
        let key = client_key(client);
        self.shard(key).get(&key).copied().unwrap_or(0)
    }

    fn shard(&self, key: u128) -> std::sync::MutexGuard<'_, HashMap<u128, usize>> {
        let index = (key ^ (key >> 64) ^ (key >> 32)) as usize % SHARDS;
        self.shards[index].lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A client's key: an IPv4 address (as its IPv4-mapped IPv6 form), or an IPv6 address's
/// /64, the least a single subscriber is given.
fn client_key(client: IpAddr) -> u128 {
    match client {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(v4.to_ipv6_mapped()),
            None => u128::from(v6) & !u128::from(u64::MAX),
        },
    }
}

/// One connection counted against its client until dropped.
#[derive(Debug)]
pub struct ClientSlot {
    clients: Arc<PerClient>,
    key: u128,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut shard = self.clients.shard(self.key);
        if let Some(open) = shard.get_mut(&self.key) {
            *open -= 1;
            if *open == 0 {
                shard.remove(&self.key);
            }
        }
    }
}

/// What a public listener checks before it serves a connection.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    /// The process's descriptor budget, and what one connection of the listener costs.
    pub descriptors: Option<(Arc<Descriptors>, usize)>,
    /// Connections per client address.
    pub per_client: Option<Arc<PerClient>>,
    /// Connections from loopback draw nothing: they come from this node's own edge, whose
    /// connection already paid for this one, or from local tools.
    pub loopback_free: bool,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The process's descriptor budget is spent.
    Descriptors,
    /// The client holds its limit of connections.
    PerClient,
}

/// What an admitted connection holds until it ends.
#[derive(Debug)]
pub struct Admitted {
    _client: Option<ClientSlot>,
    _descriptors: Option<Taken>,
}

impl Admission {
    /// The same admission for connections (or flows) that each cost `cost` descriptors.
    pub fn with_cost(&self, cost: usize) -> Self {
        Self {
            descriptors: self.descriptors.as_ref().map(|(d, _)| (d.clone(), cost)),
            ..self.clone()
        }
    }

    /// Admits a connection from `client`, or says why not.
    pub fn admit(&self, client: IpAddr) -> Result<Admitted, Refusal> {
        if self.loopback_free && client.to_canonical().is_loopback() {
            return Ok(Admitted {
                _client: None,
                _descriptors: None,
            });
        }
        let client = match &self.per_client {
            Some(per_client) => Some(per_client.take(client).ok_or(Refusal::PerClient)?),
            None => None,
        };
        let descriptors = match &self.descriptors {
            Some((descriptors, cost)) => Some(descriptors.take(*cost).ok_or(Refusal::Descriptors)?),
            None => None,
        };
        Ok(Admitted {
            _client: client,
            _descriptors: descriptors,
        })
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Descriptors => "the descriptor budget is spent",
            Self::PerClient => "the client holds its limit of connections",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_never_overspent_and_comes_back() {
        let descriptors = Arc::new(Descriptors::new(100, 10));
        assert_eq!(descriptors.budget(), 90);
        let held: Vec<_> = (0..30).map(|_| descriptors.take(3).unwrap()).collect();
        assert_eq!(descriptors.held(), 90);
        assert!(descriptors.take(1).is_none());
        assert_eq!(descriptors.refused(), 1);
        drop(held);
        assert_eq!(descriptors.held(), 0);
        assert!(descriptors.take(90).is_some());
    }

    #[test]
    fn the_reserve_scales_with_the_limit_within_bounds() {
        assert_eq!(default_reserve(1024), 256);
        assert_eq!(default_reserve(400), 200);
        assert_eq!(default_reserve(20_000), 2500);
        assert_eq!(default_reserve(1 << 20), 8192);
    }

    #[test]
    fn a_client_is_an_ipv4_address_or_an_ipv6_64() {
        let clients = Arc::new(PerClient::new(2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let one = clients.take(a).unwrap();
        let _two = clients.take(mapped).unwrap();
        assert!(
            clients.take(a).is_none(),
            "the mapped form is the same client"
        );
        assert!(clients.take(b).is_some());
        drop(one);
        assert!(clients.take(a).is_some());
        let v6: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _x = clients.take(v6).unwrap();
        let _y = clients.take(same_64).unwrap();
        assert!(clients.take(v6).is_none());
        assert!(clients.take(other_64).is_some());
        assert_eq!(clients.refused(), 2);
    }

    #[test]
    fn a_refusal_by_budget_gives_the_client_slot_back() {
        let admission = Admission {
            descriptors: Some((Arc::new(Descriptors::new(3, 0)), 3)),
            per_client: Some(Arc::new(PerClient::new(5))),
            loopback_free: false,
        };
        let client: IpAddr = "198.51.100.7".parse().unwrap();
        let first = admission.admit(client).unwrap();
        assert_eq!(admission.admit(client).unwrap_err(), Refusal::Descriptors);
        let per_client = admission.per_client.as_ref().unwrap();
        assert_eq!(per_client.open(client), 1);
        drop(first);
        assert_eq!(per_client.open(client), 0);
    }

    #[test]
    fn loopback_may_draw_nothing() {
        let descriptors = Arc::new(Descriptors::new(2, 0));
        let admission = Admission {
            descriptors: Some((descriptors.clone(), 2)),
            per_client: None,
            loopback_free: true,
        };
        let _edge: Vec<_> = ["127.0.0.1", "::1", "::ffff:127.0.0.1"]
            .iter()
            .map(|a| admission.admit(a.parse().unwrap()).unwrap())
            .collect();
        assert_eq!(descriptors.held(), 0);
        let _remote = admission.admit("192.0.2.9".parse().unwrap()).unwrap();
        assert_eq!(descriptors.held(), 2);
        assert!(admission.admit("192.0.2.10".parse().unwrap()).is_err());
    }
}
