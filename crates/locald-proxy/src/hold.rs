//! A request for a service that is starting (or restarting) waits a few seconds for it
//! before it gets the starting page: a browser reloading right after a restart gets the new
//! page, not an error. The state is read through [`ServiceView::now`], which is cheap, at a
//! short fixed pace; a held request costs a timer, no thread.

use std::time::Duration;

use crate::Traffic;
use crate::routes::{ServiceNow, ServiceView};

const PACE: Duration = Duration::from_millis(20);

/// `now` once the service is no longer starting, or as it is after `hold` (the proxy's
/// [`crate::limits::Limits::hold`]).
pub(crate) async fn while_starting(
    view: &dyn ServiceView,
    mut now: ServiceNow,
    hold: Duration,
) -> ServiceNow {
    let deadline = tokio::time::Instant::now() + hold;
    while Traffic::of(now.state) == Traffic::Starting && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(PACE).await;
        now = view.now();
    }
    now
}
