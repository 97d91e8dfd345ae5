//! The ledger's operations, pure: holds, settles, markers, periods, refusals.

use time::macros::datetime;

use super::*;
use crate::quota::settings::Periods;

fn limits(tokens_per_day: u64, runs: Option<u32>) -> ScopeLimits {
    ScopeLimits {
        concurrent_runs: runs,
        tokens: Periods {
            per_day: Some(tokens_per_day),
            ..Periods::default()
        },
        ..ScopeLimits::default()
    }
}

fn reserve(id: &str, tokens: u64, l: &ScopeLimits) -> LedgerOp {
    LedgerOp::Reserve {
        hold: id.into(),
        run: true,
        amount: Amount {
            tokens,
            cost_micros: 0,
        },
        limits: l.clone(),
        lease: time::Duration::minutes(10),
    }
}

/// Stale drivers (acting on a journal read before the run ended) neither take an ended
/// hold anew nor count its usage again; a finisher after a drop counts exactly the rest.
#[test]
fn an_ended_hold_is_never_counted_twice() {
    let now = datetime!(2026-12-04 12:00:00 UTC);
    let l = limits(1_000_000, Some(5));
    let settle = |id: &str, t: u64| LedgerOp::Settle {
        hold: id.into(),
        total: tokens(t),
        lease: time::Duration::minutes(10),
        meter: Meter::default(),
    };
    let release = |id: &str, t: u64| LedgerOp::Release {
        hold: id.into(),
        total: tokens(t),
        meter: Meter::default(),
    };
    let mut led = Ledger::default();
    // Released at 5, then a stale reserve and a stale settle of the same 5.
    led.apply(&reserve("a", 100, &l), now);
    led.apply(&release("a", 5), now);
    assert_eq!(led.apply(&reserve("a", 100, &l), now), Applied::Unchanged);
    assert_eq!(led.apply(&settle("a", 5), now), Applied::Unchanged);
    assert_eq!((led.total, led.running()), (tokens(5), 0));
    // Settled 3, dropped by a driver that saw the end, a stale reserve, then the finisher
    // releases with the final 8: 8 in all.
    led.apply(&reserve("b", 100, &l), now);
    led.apply(&settle("b", 3), now);
    led.apply(&LedgerOp::Drop { hold: "b".into() }, now);
    assert_eq!(led.apply(&reserve("b", 100, &l), now), Applied::Unchanged);
    led.apply(&release("b", 8), now);
    assert_eq!(
        (led.total, led.running(), led.outstanding()),
        (tokens(13), 0, tokens(0))
    );
    // The markers lapse after a while.
    led.roll(now + time::Duration::seconds(ENDED_KEPT + 1));
    assert!(led.holds.is_empty());
    // However fast runs end, only the newest MAX_ENDED markers stay.
    for i in 0..MAX_ENDED + 10 {
        let at = now + time::Duration::seconds(i as i64 / 2);
        led.apply(&reserve(&format!("r{i}"), 10, &l), at);
        led.apply(&release(&format!("r{i}"), 1), at);
    }
    assert_eq!(led.holds.len(), MAX_ENDED);
    assert!(!led.holds.contains_key("r0") && led.holds.contains_key("r137"));
    assert_eq!(led.total, tokens(13 + MAX_ENDED as u64 + 10));
}

/// A run that waited longer than its hold's lease takes its hold again when it goes on,
/// over the limits if need be (it was admitted), counting only what it uses from then on.
#[test]
fn a_resumed_run_takes_its_lapsed_hold_again_counting_only_the_rest() {
    let now = datetime!(2026-12-04 12:00:00 UTC);
    let l = limits(1_000_000, Some(1));
    let resume = |counted: u64| LedgerOp::Resume {
        hold: "a".into(),
        amount: tokens(100),
        counted: tokens(counted),
        lease: time::Duration::minutes(10),
    };
    let mut led = Ledger::default();
    led.apply(&reserve("a", 100, &l), now);
    led.apply(
        &LedgerOp::Settle {
            hold: "a".into(),
            total: tokens(30),
            lease: time::Duration::minutes(10),
            meter: Meter::default(),
        },
        now,
    );
    // The run waits 11 minutes: its hold lapses and another run takes the one slot.
    let later = now + time::Duration::minutes(11);
    assert!(matches!(
        led.apply(&reserve("b", 100, &l), later),
        Applied::Changed
    ));
    // Resumed, it is held again (two running over a limit of one), its 30 counted once.
    assert_eq!(led.apply(&resume(30), later), Applied::Changed);
    assert_eq!((led.running(), led.total), (2, tokens(30)));
    assert_eq!(led.apply(&resume(30), later), Applied::Changed, "renewed");
    led.apply(
        &LedgerOp::Release {
            hold: "a".into(),
            total: tokens(45),
            meter: Meter::default(),
        },
        later,
    );
    assert_eq!((led.running(), led.total), (1, tokens(45)));
    // An ended hold is not taken again.
    assert_eq!(led.apply(&resume(45), later), Applied::Unchanged);
}

fn tokens(t: u64) -> Amount {
    Amount {
        tokens: t,
        cost_micros: 0,
    }
}

#[test]
fn reserve_settle_release_refund_and_refuse_at_the_limit() {
    let now = datetime!(2026-12-04 16:30:10 UTC);
    let l = limits(100, None);
    let mut led = Ledger::default();
    assert_eq!(led.apply(&reserve("a", 60, &l), now), Applied::Changed);
    // 60 held: 50 more would pass 100.
    let Applied::Refused(r) = led.apply(&reserve("b", 50, &l), now) else {
        panic!("must refuse")
    };
    assert_eq!(r.limit, "tokens.per_day");
    assert_eq!(r.code(), "budget_exceeded");
    assert_eq!(r.resets_at, Some(datetime!(2026-12-05 00:00:00 UTC)));
    // A repeated reserve renews, never doubles.
    assert_eq!(led.apply(&reserve("a", 60, &l), now), Applied::Changed);
    assert_eq!(led.outstanding(), tokens(60));
    // Settling is by running total: repeats count nothing more.
    let settle = LedgerOp::Settle {
        hold: "a".into(),
        total: tokens(20),
        lease: time::Duration::minutes(10),
        meter: Meter::default(),
    };
    led.apply(&settle, now);
    led.apply(&settle, now);
    assert_eq!(led.day.used, tokens(20));
    assert_eq!(led.outstanding(), tokens(40));
    // Release at 30 used refunds the other 30.
    let release = LedgerOp::Release {
        hold: "a".into(),
        total: tokens(30),
        meter: Meter::default(),
    };
    assert_eq!(led.apply(&release, now), Applied::Changed);
    assert_eq!(led.apply(&release, now), Applied::Unchanged);
    assert_eq!((led.day.used, led.outstanding()), (tokens(30), tokens(0)));
    assert_eq!(led.apply(&reserve("b", 50, &l), now), Applied::Changed);
    // The next day starts from zero.
    let tomorrow = datetime!(2026-12-05 00:00:01 UTC);
    led.apply(
        &LedgerOp::Release {
            hold: "b".into(),
            total: tokens(50),
            meter: Meter::default(),
        },
        now,
    );
    assert_eq!(led.day.used, tokens(80));
    led.roll(tomorrow);
    assert_eq!((led.day.used, led.month.used), (tokens(0), tokens(80)));
}

#[test]
fn concurrency_and_lapsed_holds() {
    let now = datetime!(2026-12-31 23:59:59 UTC);
    let l = limits(1_000_000, Some(2));
    let mut led = Ledger::default();
    led.apply(&reserve("a", 1, &l), now);
    led.apply(&reserve("b", 1, &l), now);
    let Applied::Refused(r) = led.apply(&reserve("c", 1, &l), now) else {
        panic!("third run must wait")
    };
    assert!(r.wait && r.code() == "quota_exceeded" && r.resets_at.is_none());
    // The holders were lost: their leases lapse and the slot frees.
    let later = now + time::Duration::minutes(11);
    assert_eq!(led.apply(&reserve("c", 1, &l), later), Applied::Changed);
    assert_eq!(led.running(), 1);
    assert_eq!(Period::Month.end(now), datetime!(2027-01-01 00:00:00 UTC));
    assert_eq!(
        Period::Minute.start(later),
        datetime!(2027-01-01 00:10:00 UTC)
    );
}
