//! Counters exported to the [`metrics`] facade (feature `metrics`).
//!
//! A driver whose [`DriverConfig::metrics`](crate::DriverConfig::metrics)
//! names its core publishes, after every step, the core's [`Counters`] and
//! the driver's [`DriverStats`] as absolute counters labelled
//! `core = <name>`, to whatever recorder the application installed
//! (Prometheus, StatsD, …). Without a recorder the calls cost next to
//! nothing. The names:
//!
//! | metric | what |
//! |---|---|
//! | `ft_messages_sent`, `ft_messages_received`, `ft_messages_dropped` | the core's messages |
//! | `ft_retransmissions` | messages sent again |
//! | `ft_timers_fired`, `ft_persists`, `ft_compactions` | the core's timers, persists asked, compactions asked |
//! | `ft_driver_datagrams_in`, `ft_driver_datagrams_out` | datagrams through the channel |
//! | `ft_driver_decode_failures`, `ft_driver_send_failures`, `ft_driver_recv_failures` | what the driver dropped or could not send |
//! | `ft_driver_persists`, `ft_driver_compactions` | records made durable, log prefixes dropped |

use crate::driver::DriverStats;
use crate::protocol::Counters;

/// Publishes `c` and `d` for the core named `core`.
pub fn export(core: &'static str, c: &Counters, d: &DriverStats) {
    let values: [(&'static str, u64); 15] = [
        ("ft_messages_sent", c.messages_sent),
        ("ft_messages_received", c.messages_received),
        ("ft_messages_dropped", c.messages_dropped),
        ("ft_retransmissions", c.retransmissions),
        ("ft_timers_fired", c.timers_fired),
        ("ft_persists", c.persists),
        ("ft_compactions", c.compactions),
        ("ft_driver_datagrams_in", d.datagrams_in),
        ("ft_driver_datagrams_out", d.datagrams_out),
        ("ft_driver_decode_failures", d.decode_failures),
        ("ft_driver_send_failures", d.send_failures),
        ("ft_driver_recv_failures", d.recv_failures),
        ("ft_driver_persists", d.persists),
        ("ft_driver_compactions", d.compactions),
        ("ft_driver_events", d.events),
    ];
    for (name, v) in values {
        metrics::counter!(name, "core" => core).absolute(v);
    }
}
