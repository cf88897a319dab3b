//! A simulator of nixswarm at internet scale (work in progress): a
//! deterministic discrete-event core with virtual time ([`clock`]), a
//! network of nodes with uplinks, downlinks and round-trip times ([`net`]),
//! store paths with sizes, closures and Zipf popularity ([`demand`]),
//! and sessions that come and go ([`churn`]). Each part is checked by unit
//! tests that it delivers what it promises; the node's decision code is to
//! run on top of it.

pub mod churn;
pub mod clock;
pub mod demand;
pub mod dht;
pub mod net;
