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
        allot: None,
    }
}

/// A reservation that also asks for an allowance of 16 more runs for `holder`.
fn reserve_allot(id: &str, tokens: u64, l: &ScopeLimits, holder: &str) -> LedgerOp {
    let LedgerOp::Reserve {
        hold,
        run,
        amount,
        limits,
        lease,
        ..
    } = reserve(id, tokens, l)
    else {
        unreachable!("a reserve")
    };
    LedgerOp::Reserve {
        hold,
        run,
        amount,
        limits,
        lease,
        allot: Some(Allot {
            holder: holder.into(),
            runs: 16,
            lease: time::Duration::seconds(2),
        }),
    }
}

fn draw(id: &str, tokens_each: u64, holder: &str) -> LedgerOp {
    LedgerOp::Draw {
        hold: id.into(),
        holder: holder.into(),
        amount: tokens(tokens_each),
        lease: time::Duration::minutes(10),
    }
}

/// An allowance keeps half of every limit free, counts as reserved and running for others,
/// moves into holds as its runs draw it, and lapses.
#[test]
fn allowances_keep_half_of_each_limit_free_and_lapse() {
    let now = datetime!(2026-12-04 12:00:00 UTC);
    // 1,000 tokens a day, 10 a run; 40 runs at once.
    let l = limits(1_000, Some(40));
    let mut led = Ledger::default();
    let Applied::Allotted(a) = led.apply(&reserve_allot("r1", 10, &l, "o1"), now) else {
        panic!("an allowance");
    };
    // 1 running: 40 - 1 - 20 kept free leaves 19 slots; tokens leave (1000-10-500)/10 = 49.
    assert_eq!((a.runs, a.each), (16, tokens(10)));
    assert_eq!((led.running(), led.outstanding()), (17, tokens(170)));
    // The second orchestrator gets what keeps half the slots free: 40 - 18 - 20 = 2.
    let Applied::Allotted(b) = led.apply(&reserve_allot("r2", 10, &l, "o2"), now) else {
        panic!("an allowance");
    };
    assert_eq!(b.runs, 2);
    // A third gets none: the run is reserved, nothing allotted.
    assert_eq!(
        led.apply(&reserve_allot("r3", 10, &l, "o3"), now),
        Applied::Changed
    );
    assert_eq!(led.running(), 21);
    // Drawing moves a run from the allowance into its own hold: nothing else changes.
    assert_eq!(led.apply(&draw("r4", 10, "o2"), now), Applied::Changed);
    assert_eq!(led.allowances["o2"].runs, 1);
    assert_eq!((led.running(), led.outstanding()), (21, tokens(210)));
    assert_eq!(led.apply(&draw("r5", 10, "o2"), now), Applied::Changed);
    assert!(!led.allowances.contains_key("o2"), "drawn to the end");
    // A draw repeated (a redelivered run) renews the hold and takes nothing more.
    assert_eq!(led.apply(&draw("r5", 10, "o1"), now), Applied::Changed);
    assert_eq!(led.allowances["o1"].runs, 16);
    // Given back, or lapsed (2 s lease, whole seconds): gone, and what it kept is free.
    assert_eq!(
        led.apply(
            &LedgerOp::Return {
                holder: "o1".into()
            },
            now
        ),
        Applied::Changed
    );
    assert_eq!(led.running(), 5);
    led.apply(&reserve_allot("r6", 10, &l, "o1"), now);
    assert!(led.allowances.contains_key("o1"));
    led.roll(now + time::Duration::seconds(3));
    assert!(led.allowances.is_empty(), "lapsed");
    // A draw after its allowance lapsed still holds the run: it was admitted.
    let later = now + time::Duration::seconds(3);
    assert_eq!(led.apply(&draw("r7", 10, "o1"), later), Applied::Changed);
    assert_eq!(led.running(), 7);
}

/// No run is refused while capacity sits in an allowance: the refusal waits until the
/// allowance is drawn or given back, and then is final.
#[test]
fn a_refusal_waits_while_an_allowance_is_out() {
    let now = datetime!(2026-12-04 12:00:00 UTC);
    // 100 tokens, 10 a run: 10 runs in all. An allowance of 4 keeps half free.
    let l = limits(100, None);
    let mut led = Ledger::default();
    let Applied::Allotted(a) = led.apply(&reserve_allot("r0", 10, &l, "o1"), now) else {
        panic!("an allowance");
    };
    assert_eq!(a.runs, 4);
    for i in 1..=5 {
        assert_eq!(
            led.apply(&reserve(&format!("x{i}"), 10, &l), now),
            Applied::Changed
        );
    }
    // 10 runs' worth taken (5 of them in o1's allowance): the next waits.
    let Applied::Refused(r) = led.apply(&reserve("late", 10, &l), now) else {
        panic!("refused");
    };
    assert!(r.wait, "{r:?}");
    for i in 1..=4 {
        led.apply(&draw(&format!("d{i}"), 10, "o1"), now);
    }
    let Applied::Refused(r) = led.apply(&reserve("late", 10, &l), now) else {
        panic!("refused");
    };
    assert!(!r.wait, "final once no allowance is out: {r:?}");
    assert_eq!(r.code(), "budget_exceeded");
    assert_eq!(led.holds.len(), 10);
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
    let newest = format!("r{}", MAX_ENDED + 9);
    assert!(!led.holds.contains_key("r0") && led.holds.contains_key(&newest));
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
