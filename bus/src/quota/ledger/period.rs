//! The calendar periods a ledger counts usage in (UTC minute, day and month), and what was used
//! in one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::{Date, Month, OffsetDateTime, Time};

use super::Amount;
use crate::quota::settings::Periods;

/// The calendar periods budgets count in (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Minute,
    Day,
    Month,
}

impl Period {
    pub const ALL: [Period; 3] = [Self::Minute, Self::Day, Self::Month];

    /// The settings' field name (`per_day`).
    pub fn field(self) -> &'static str {
        match self {
            Self::Minute => "per_minute",
            Self::Day => "per_day",
            Self::Month => "per_month",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "minute" => Some(Self::Minute),
            "day" => Some(Self::Day),
            "month" => Some(Self::Month),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Day => "day",
            Self::Month => "month",
        }
    }

    /// Where the period holding `t` starts.
    pub fn start(self, t: OffsetDateTime) -> OffsetDateTime {
        let t = t.to_offset(time::UtcOffset::UTC);
        match self {
            Self::Minute => {
                t.replace_time(Time::from_hms(t.hour(), t.minute(), 0).unwrap_or(Time::MIDNIGHT))
            }
            Self::Day => t.replace_time(Time::MIDNIGHT),
            Self::Month => Date::from_calendar_date(t.year(), t.month(), 1)
                .map_or(t, |d| d.midnight().assume_utc()),
        }
    }

    /// Where the period holding `t` ends (the next one starts).
    pub fn end(self, t: OffsetDateTime) -> OffsetDateTime {
        let start = self.start(t);
        match self {
            Self::Minute => start + time::Duration::MINUTE,
            Self::Day => start + time::Duration::DAY,
            Self::Month => {
                let (y, m) = match start.month() {
                    Month::December => (start.year() + 1, Month::January),
                    m => (start.year(), m.next()),
                };
                Date::from_calendar_date(y, m, 1).map_or(start + time::Duration::days(31), |d| {
                    d.midnight().assume_utc()
                })
            }
        }
    }

    pub(super) fn of<T: Copy>(self, p: &Periods<T>) -> Option<T> {
        match self {
            Self::Minute => p.per_minute,
            Self::Day => p.per_day,
            Self::Month => p.per_month,
        }
    }
}

/// What was used in one period, in all and by model and agent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Unix seconds where the period starts.
    pub start: i64,
    pub used: Amount,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, Amount>,
    /// Runs' usage by agent (chat completions have none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub agents: BTreeMap<String, Amount>,
}
