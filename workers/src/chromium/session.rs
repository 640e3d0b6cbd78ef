//! One job's page: what a job does with it, and how it ends (wiped and
//! kept warm for the agent's next job, or closed).

use super::ChromiumPool;
use super::lanes::Lane;
use crate::outcome::FetchError;
use crate::page::BrowserPage;

/// One job's page, in a browser context of the job's agent.
pub struct Session<'a> {
    pub(super) pool: &'a ChromiumPool,
    pub(super) lane: Lane,
    pub(super) _slot: tokio::sync::SemaphorePermit<'a>,
}

impl std::ops::Deref for Session<'_> {
    type Target = BrowserPage;

    fn deref(&self) -> &BrowserPage {
        &self.lane.page
    }
}

impl Session<'_> {
    /// The job loads `url`: its origin's storage is cleared after the job,
    /// whatever the page's events say.
    pub fn visited(&self, url: &str) {
        self.lane.visited(url);
    }

    /// Releases the page after a job whose `result` leaves it sound (it
    /// loaded, or the gateway or the site said no); closes it otherwise.
    pub async fn end<T>(self, result: &Result<T, FetchError>) {
        match result {
            Ok(_) => self.release().await,
            Err(error) if page_still_sound(error) => self.release().await,
            Err(_) => self.close().await,
        }
    }

    /// The job is done and the page sound: wiped and kept warm for
    /// the agent's next job, unless it served its share of jobs or its
    /// browser is no longer the running one.
    pub async fn release(self) {
        let Session { pool, mut lane, _slot } = self;
        let limit = pool.config.jobs_per_page;
        let current = pool.healthy_generation().await == Some(lane.generation);
        let kept = current && (limit == 0 || lane.jobs < limit);
        match if kept { lane.wipe().await } else { Ok(()) } {
            Ok(()) if kept => {
                pool.idle.put(lane);
                pool.sweep_idle_pages();
            }
            Ok(()) => lane.close().await,
            Err(error) => {
                tracing::debug!(%error, "the page is closed instead of kept warm");
                lane.close().await;
            }
        }
        drop(_slot);
        pool.close_retired().await;
    }

    /// Closes the page and disposes of its context.
    pub async fn close(self) {
        let Session { pool, lane, _slot } = self;
        lane.close().await;
        drop(_slot);
        pool.close_retired().await;
    }
}

/// Whether a page whose job failed with `error` may serve another job: yes
/// when the page did its part and an answer said no; not after a timeout or
/// a browser error, where it may be mid-load or broken.
fn page_still_sound(error: &FetchError) -> bool {
    matches!(
        error,
        FetchError::Denied { .. }
            | FetchError::RateLimited { .. }
            | FetchError::BreakerOpen { .. }
            | FetchError::Gateway { .. }
            | FetchError::Origin { .. }
            | FetchError::MissingRequired(_)
            | FetchError::TooManyRedirects(_)
    )
}
