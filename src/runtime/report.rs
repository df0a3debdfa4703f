//! A report made against the store: the counters it reads, or its rows a range of leads at a
//! time ([`Fold`]). The one way the command line, the API and the bench make a report.

use chrono::{DateTime, Utc};

use crate::funnel::Funnel;
use crate::report::ReportError;
use crate::report::request::{Answer, Fold, Request, What, answer};
use crate::store::{ReportData, ReportRead, Store, StoreError};

/// Why a report was not made.
#[derive(Debug, thiserror::Error)]
pub enum ReportFailed {
    /// The request does not fit the data (a field no lead has, …): the caller's to fix.
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The report `req` asks for of `f`, as of `now`.
pub async fn make(
    store: &Store,
    f: &Funnel,
    req: &Request,
    now: DateTime<Utc>,
) -> Result<Answer, ReportFailed> {
    let id = &f.id.value;
    let req = &req.kept_by(store.kept_fields());
    match req.read(now, store.zone()) {
        ReportRead::Rows(needs) => {
            let mut fold = Fold::new(f, req, now)?;
            store
                .each_range(id, now, needs, |rows| fold.add(&rows))
                .await?;
            Ok(fold.finish()?)
        }
        ReportRead::Parts {
            counts,
            edges,
            needs,
        } => {
            // The forecast's hours around are counted as its observed cohort's funnel report.
            let forecast = req.what == What::Forecast;
            let observed = forecast.then(|| req.observed_cohort(now));
            let mut fold = Fold::of_edges(f, observed.as_ref().unwrap_or(req), now, &edges)?;
            let windows = crate::store::Edge::pieces(&edges);
            // The calendar view files what happened in the hours; the entry view, the runs
            // that entered in them.
            let calendar = counts.scope.view.summed_as() == crate::tally::View::Calendar;
            let add = |rows| fold.add(&rows);
            // The counters and the rows of the hours around are read side by side, on two
            // connections.
            let (mut figs, ()) = tokio::try_join!(
                store.counted(id, &counts),
                store.each_range_around(id, now, needs, &windows, calendar, add),
            )?;
            fold.edges(&edges, &mut figs);
            let data = match forecast {
                true => ReportData::Forecast(store.observations(id, figs).await?),
                false => ReportData::Counts(figs),
            };
            Ok(answer(f, &data, req, now)?)
        }
        read @ (ReportRead::Counts(_) | ReportRead::Forecast(_)) => {
            let data: ReportData = store.read_report(id, &read, now).await?;
            Ok(answer(f, &data, req, now)?)
        }
    }
}

/// The reports `reqs` ask for of `f`, as of `now`, in order. When every one reads the
/// counters of the same days, grouping and view (a dashboard page's funnel, per-email and A/B
/// figures), the counters are read once, all metrics, and each report made from them;
/// otherwise each is made on its own.
pub async fn make_all(
    store: &Store,
    f: &Funnel,
    reqs: &[Request],
    now: DateTime<Utc>,
) -> Result<Vec<Answer>, ReportFailed> {
    let reqs: Vec<Request> = reqs
        .iter()
        .map(|r| r.kept_by(store.kept_fields()))
        .collect();
    let reads: Vec<ReportRead> = reqs.iter().map(|r| r.read(now, store.zone())).collect();
    if let Some(read) = shared(&reads) {
        let data: ReportData = store.read_report(&f.id.value, &read, now).await?;
        let mut out = Vec::with_capacity(reqs.len());
        for req in &reqs {
            out.push(answer(f, &data, req, now)?);
        }
        return Ok(out);
    }
    let mut out = Vec::with_capacity(reqs.len());
    for req in &reqs {
        out.push(make(store, f, req, now).await?);
    }
    Ok(out)
}

/// The one counters read that answers all of `reads`, when they differ only in the metrics
/// they keep and whether the calendar view wants the entry totals too.
fn shared(reads: &[ReportRead]) -> Option<ReportRead> {
    let mut out: Option<ReportRead> = None;
    for r in reads {
        let ReportRead::Counts(c) = r else {
            return None;
        };
        match &mut out {
            None => {
                let mut all = c.clone();
                all.scope.prefix = None;
                out = Some(ReportRead::Counts(all));
            }
            Some(ReportRead::Counts(o)) => {
                if (
                    o.from_day,
                    o.to_day,
                    &o.grouping,
                    &o.origins,
                    o.scope.view,
                    &o.hours,
                ) != (
                    c.from_day,
                    c.to_day,
                    &c.grouping,
                    &c.origins,
                    c.scope.view,
                    &c.hours,
                ) {
                    return None;
                }
                o.scope.entry_totals |= c.scope.entry_totals;
            }
            Some(_) => return None,
        }
    }
    out
}
