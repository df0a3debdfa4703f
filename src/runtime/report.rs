//! A report made against the store: the counters it reads, or its rows a range of leads at a
//! time ([`Fold`]). The one way the command line, the API and the bench make a report.

use chrono::{DateTime, Utc};

use crate::funnel::Funnel;
use crate::report::ReportError;
use crate::report::request::{Answer, Fold, Request, answer};
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
    match req.read(now, store.zone()) {
        ReportRead::Rows(needs) => {
            let mut fold = Fold::new(f, req, now)?;
            store
                .each_range(id, now, needs, |rows| fold.add(&rows))
                .await?;
            Ok(fold.finish()?)
        }
        read @ (ReportRead::Counts { .. } | ReportRead::Forecast { .. }) => {
            let data: ReportData = store.read_report(id, &read, now).await?;
            Ok(answer(f, &data, req, now)?)
        }
    }
}
