//! Running one job: the backend tier that fetches it (http, Chromium,
//! Steel, with `auto` escalating), each fetch in its own trace span, and
//! extraction off the async threads for large pages.

use clawgress_workers::extract::{Extracted, examine};
use clawgress_workers::job::{FetchMode, Job};
use clawgress_workers::outcome::FetchError;
use tracing::Instrument as _;

use clawgress_workers::steel::Lease;

use super::{Shared, Slot, Tier};
use crate::result::FetchSummary;

pub(super) struct Done {
    pub(super) summary: Option<FetchSummary>,
    pub(super) data: std::collections::BTreeMap<String, serde_json::Value>,
    pub(super) screenshot: Option<String>,
}

pub(super) async fn execute(shared: &Shared, job: &Job, slot: &Slot) -> Result<Done, FetchError> {
    let scrape = match job {
        Job::Scrape(scrape) => scrape,
        Job::Agent(_) if shared.config.dry_run => {
            return Ok(Done {
                summary: None,
                data: Default::default(),
                screenshot: None,
            });
        }
        Job::Agent(agent) => {
            let outcome =
                clawgress_workers::agent::run(shared.backends.chromium.as_deref(), &shared.backends.http, agent)
                    .await?;
            let mut data = outcome.data;
            data.insert("_steps_run".to_string(), outcome.steps_run.into());
            data.insert("_tokens".to_string(), outcome.tokens.into());
            return Ok(Done {
                summary: None,
                data,
                screenshot: outcome.screenshots.into_iter().next(),
            });
        }
    };
    let host = url::Url::parse(&scrape.url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default();
    let needs_browser = scrape.wait_for.is_some() || scrape.screenshot;
    let chromium = shared.backends.chromium.is_some();
    let steel = shared.backends.steel.as_deref();
    let mut first = match scrape.fetch {
        FetchMode::Chromium => Tier::Chromium,
        FetchMode::Steel => Tier::Steel,
        FetchMode::Http => Tier::Http,
        FetchMode::Auto if needs_browser && chromium => Tier::Chromium,
        // `supported` let it in, so there is a browser: Steel.
        FetchMode::Auto if needs_browser => Tier::Steel,
        FetchMode::Auto => shared
            .tiers
            .lock()
            .map(|t| t.get(&host).copied().unwrap_or(Tier::Http))
            .unwrap_or(Tier::Http),
    };
    if first == Tier::Chromium && !chromium {
        first = Tier::Http;
    }
    // A Steel server is leased before the host's slot is taken, so a job
    // waiting for Steel holds neither the host's slot nor the scheduler's.
    let mut lease = None;
    if first == Tier::Steel {
        let steel = steel.ok_or(FetchError::SteelBusy)?;
        match steel.try_lease() {
            Some(free) => lease = Some(free),
            // `auto` found Steel best for this host before, but does not
            // queue for it.
            None if scrape.fetch == FetchMode::Auto && !needs_browser => first = Tier::Http,
            None if !steel.has_room() => return Err(FetchError::SteelBusy),
            None => {
                slot.release();
                lease = Some(steel.lease(&[]).await?);
            }
        }
    }
    // The host's slot (shared by every scheduler) and politeness gap; the
    // job gives its pool slot back while it waits for them.
    let _turn = shared.hosts.turn(&host, slot).await.map_err(|_| FetchError::HostBusy)?;
    if shared.config.dry_run {
        return Ok(Done {
            summary: Some(FetchSummary {
                tier: "dry-run".to_string(),
                status: 0,
                final_url: scrape.url.clone(),
                hops: Vec::new(),
                request_id: None,
            }),
            data: Default::default(),
            screenshot: None,
        });
    }
    let done = fetch_with(shared, scrape, first, lease).await?;
    // `auto` escalates when http got a page a browser would do better on:
    // to Chromium, or to a Steel server that is free now (never a busy one).
    let escalate =
        scrape.fetch == FetchMode::Auto && first == Tier::Http && (!done.1.missing_required.is_empty() || done.2);
    let escalation = match (escalate, chromium, steel) {
        (false, _, _) => None,
        (true, true, _) => Some((Tier::Chromium, None)),
        (true, false, Some(steel)) => steel.try_lease().map(|free| (Tier::Steel, Some(free))),
        (true, false, None) => None,
    };
    let (done, found, tier) = match escalation {
        Some((tier, lease)) => match fetch_with(shared, scrape, tier, lease).await {
            Ok(again) => (again.0, again.1, tier),
            // The Steel server turned out to be busy (another client): the
            // http page stands, as when no server was free.
            Err(FetchError::SteelBusy) => (done.0, done.1, first),
            Err(error) => return Err(error),
        },
        None => (done.0, done.1, first),
    };
    if scrape.fetch == FetchMode::Auto
        && let Ok(mut tiers) = shared.tiers.lock()
    {
        if tiers.len() > 100_000 {
            tiers.clear();
        }
        tiers.insert(host, tier);
    }
    if !found.missing_required.is_empty() {
        return Err(FetchError::MissingRequired(found.missing_required));
    }
    Ok(Done {
        data: found.values,
        ..done
    })
}

/// Pages up to this size are parsed on the async thread (about 0.1 ms).
const INLINE_PARSE: usize = 64 * 1024;

/// One fetch with one tier, and its extraction (off the async threads:
/// parsing a large page would stall pulls and progress acks). The flag says
/// whether the page looks like a JavaScript shell.
async fn fetch_with(
    shared: &Shared,
    scrape: &clawgress_workers::job::ScrapeJob,
    tier: Tier,
    lease: Option<Lease<'_>>,
) -> Result<(Done, Extracted, bool), FetchError> {
    let span = tracing::debug_span!(
        target: "clawgress_scheduler::fetch",
        "fetch",
        otel.kind = "client",
        tier = ?tier,
        url.full = %scrape.url,
    );
    let fetched = async {
        Ok::<_, FetchError>(match (tier, &shared.backends.chromium, &shared.backends.steel, lease) {
            (Tier::Chromium, Some(chromium), _, _) => {
                let (page, extras) = chromium.fetch(scrape).await?;
                (page, extras.screenshot, "chromium")
            }
            (Tier::Steel, _, Some(steel), Some(lease)) => {
                let (page, extras) = steel.fetch_leased(lease, scrape).await?;
                (page, extras.screenshot, "steel")
            }
            _ => (shared.backends.http.fetch(scrape).await?, None, "http"),
        })
    };
    let began = std::time::Instant::now();
    let (mut page, screenshot, name) = fetched.instrument(span).await?;
    shared.metrics.fetched(name, began.elapsed().as_secs_f64());
    let check_shell = tier == Tier::Http && scrape.fetch == FetchMode::Auto;
    let body = std::mem::take(&mut page.body);
    // Small pages are parsed in place: handing them to the blocking pool
    // costs more than the parse. Large ones go there, so a parse cannot
    // stall pulls and progress acks.
    let (found, shell) = if body.len() <= INLINE_PARSE {
        examine(&body, &scrape.extract, check_shell)
    } else {
        let specs = scrape.extract.clone();
        tokio::task::spawn_blocking(move || examine(&body, &specs, check_shell))
            .await
            .map_err(|_| FetchError::Transport("extraction failed".to_string()))?
    };
    Ok((
        Done {
            summary: Some(FetchSummary {
                tier: name.to_string(),
                status: page.status,
                final_url: page.final_url,
                hops: page.hops,
                request_id: page.request_id,
            }),
            data: Default::default(),
            screenshot,
        },
        found,
        shell,
    ))
}
