//! An upgraded connection (WebSocket and other HTTP/1.1 upgrades): bytes copied both ways
//! between client and member until either closes, counted against the member.

use std::sync::atomic::Ordering::Relaxed;

use hyper_util::rt::TokioIo;

use super::upstream::lease::Lease;

pub async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    member: hyper::upgrade::OnUpgrade,
    lease: Lease,
) {
    match tokio::try_join!(client, member) {
        Ok((client, member)) => {
            let mut client = TokioIo::new(client);
            let mut member = TokioIo::new(member);
            match tokio::io::copy_bidirectional(&mut client, &mut member).await {
                Ok((to_member, from_member)) => {
                    lease.stats().sent_bytes.fetch_add(to_member, Relaxed);
                    lease.stats().received_bytes.fetch_add(from_member, Relaxed);
                }
                Err(e) => tracing::debug!(error = %e, "upgraded connection ended with an error"),
            }
        }
        Err(e) => tracing::debug!(error = %e, "upgrade failed"),
    }
}
