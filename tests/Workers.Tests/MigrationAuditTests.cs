using SEmigrate.Contracts.Audit;
using SEmigrate.Contracts.Migration;
using SEmigrate.Workers.Audit;
using SEmigrate.Workers.Embedded;

namespace SEmigrate.Workers.Tests;

/// <summary>The audit's invariants on event lists: a consistent migration passes each, and each kind of
/// lie or loss in the record fails the invariant it breaks, naming what is wrong.</summary>
public class MigrationAuditTests
{
    private static readonly Guid Id = Guid.NewGuid();
    private static readonly DateTimeOffset At = DateTimeOffset.UnixEpoch;

    /// <summary>A semigrate migration of 3000 pages to main (1000) and two sub-hosts, switched over.</summary>
    private static List<object> SwitchedOver(string mode = "semigrate") =>
    [
        new MigrationRequested(Id, Guid.NewGuid(), "src", "main", ["a", "b"], mode, At),
        new PagesPlaced(Id, [new Assignment("main", 0, 1024, 1000), new Assignment("a", 1024, 2048, 1000), new Assignment("b", 2048, 3072, 1000)], At),
        new PagingServersStarted(Id, ["main", "a", "b"], At),
        new GuestIntrospected(Id, 40, 12, [], At),
        new PagesClassified(Id, 1000, 200, 1800, At),
        Transferred("main", new PageCounts(300, 100, 600)),
        Transferred("a", new PageCounts(300, 100, 600)),
        Transferred("b", new PageCounts(400, 0, 600)),
        new StepCompleted(Id, StepKeys.SwitchOver, "{}", At),
        new MigrationSwitchedOver(Id, "main", 1000, 2000, At, "AB12", "AB12", ManifestEpoch: 4),
        new StepCompleted(Id, StepKeys.ReleaseSource(vmLeft: true), "{}", At),
    ];

    /// <summary>Epochs as a source takes them: one per attempt, the three transfers 1 to 3 (the manifest 4).</summary>
    private static DestinationTransferred Transferred(string host, PageCounts classified, PageCounts? sent = null, IReadOnlyList<uint>? epochs = null) =>
        new(Id, host, 1000, 1000, 0, 0, epochs?.Count ?? 1, At, classified, sent ?? classified, epochs ?? [host switch { "main" => 1u, "a" => 2u, _ => 3u }]);

    private static AuditVerdict Verdict(List<object> events, string invariant) =>
        MigrationAudit.Invariants(events, MigrationAudit.StateOf(events)).Single(v => v.Invariant.StartsWith(invariant, StringComparison.Ordinal));

    [Fact]
    public void A_consistent_migration_passes_every_invariant()
    {
        var events = SwitchedOver();
        Assert.Equal(MigrationState.SwitchedOver, MigrationAudit.StateOf(events));
        Assert.All(MigrationAudit.Invariants(events, MigrationState.SwitchedOver), v => Assert.True(v.Ok, $"{v.Invariant}: {v.Detail}"));
    }

    [Fact]
    public void A_sealed_page_sent_as_plain_fails_unless_the_mode_is_noenc()
    {
        var events = SwitchedOver();
        events[6] = Transferred("a", new PageCounts(300, 100, 600), sent: new PageCounts(300, 101, 599));
        var verdict = Verdict(events, "no page classified sealed");
        Assert.False(verdict.Ok);
        Assert.Contains("a: 1 pages classified sealed travelled unsealed", verdict.Detail, StringComparison.Ordinal);

        var noenc = SwitchedOver("noenc");
        noenc[5] = Transferred("main", new PageCounts(300, 100, 600), sent: new PageCounts(0, 1000, 0));
        var baseline = Verdict(noenc, "no page classified sealed");
        Assert.True(baseline.Ok, baseline.Detail);
        Assert.Contains("mode noenc: 600 pages classified sealed travelled unencrypted", baseline.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public void More_pages_left_behind_than_are_free_fails()
    {
        var events = SwitchedOver();
        events[7] = Transferred("b", new PageCounts(400, 0, 600), sent: new PageCounts(500, 0, 500));
        Assert.Contains("b: 500 pages stayed behind, only 400 are free", Verdict(events, "no page classified sealed").Detail, StringComparison.Ordinal);
    }

    [Fact]
    public void A_key_epoch_used_twice_fails_naming_who_used_it()
    {
        var events = SwitchedOver();
        Assert.Equal("4 epochs, each used once (3 transfer attempts and the manifest)", Verdict(events, "no key epoch used twice").Detail);
        events[7] = Transferred("b", new PageCounts(400, 0, 600), epochs: [3, 5]); // retried
        Assert.True(Verdict(events, "no key epoch used twice").Ok);
        events[6] = Transferred("a", new PageCounts(300, 100, 600), epochs: [2, 5]);
        var verdict = Verdict(events, "no key epoch used twice");
        Assert.False(verdict.Ok);
        Assert.Equal("epoch 5 used by the transfer to a and the transfer to b", verdict.Detail);
        events[6] = Transferred("a", new PageCounts(300, 100, 600), epochs: [4]);
        Assert.Equal("epoch 4 used by the transfer to a and the manifest", Verdict(events, "no key epoch used twice").Detail);
    }

    [Fact]
    public void A_manifest_opened_other_than_the_one_sent_fails()
    {
        var events = SwitchedOver();
        events[9] = new MigrationSwitchedOver(Id, "main", 1000, 2000, At, "AB12", "CD34", ManifestEpoch: 4);
        var verdict = Verdict(events, "the main host opened");
        Assert.False(verdict.Ok);
        Assert.Contains("the source sent AB12, the main host opened CD34", verdict.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public void Overlapping_ranges_or_pages_placed_twice_fail()
    {
        var events = SwitchedOver();
        events[1] = new PagesPlaced(Id, [new Assignment("main", 0, 1024, 1000), new Assignment("a", 1000, 2048, 1000), new Assignment("b", 2048, 3072, 1000)], At);
        Assert.Contains("a's range starts at page 1000, the one before it ends at 1024", Verdict(events, "every page classified").Detail, StringComparison.Ordinal);
        events.Add(new PagesPlaced(Id, [], At));
        Assert.Contains("placed 2 times", Verdict(events, "every page classified").Detail, StringComparison.Ordinal);
    }

    [Fact]
    public void A_destination_that_acknowledged_fewer_pages_than_placed_fails()
    {
        var events = SwitchedOver();
        events[6] = Transferred("a", new PageCounts(300, 100, 600)) with { Pages = 999 };
        Assert.Contains("a: 1000 pages placed, 999 acknowledged", Verdict(events, "pages sent = pages acknowledged").Detail, StringComparison.Ordinal);
        events.RemoveAt(6);
        Assert.Contains("a: switched over without its transfer recorded", Verdict(events, "pages sent = pages acknowledged").Detail, StringComparison.Ordinal);
    }

    [Fact]
    public void An_end_the_steps_do_not_bear_out_fails()
    {
        var events = SwitchedOver();
        events.RemoveAt(10); // the source never let go of the key
        Assert.Contains("the source never let go of the key", Verdict(events, "the end matches").Detail, StringComparison.Ordinal);

        List<object> undone =
        [
            .. SwitchedOver().Take(3),
            new StepCompleted(Id, StepKeys.ReleasePaging("main"), "{}", At),
            new StepCompleted(Id, StepKeys.ReleasePaging("b"), "{}", At),
            new StepCompleted(Id, StepKeys.ReleaseSource(vmLeft: false), "{}", At),
            new MigrationCompensated(Id, "a is full", ["main", "b"], At),
        ];
        var verdict = Verdict(undone, "the end matches");
        Assert.False(verdict.Ok);
        Assert.Contains("undone, but a never released the VM", verdict.Detail, StringComparison.Ordinal);
        undone[^1] = new MigrationCompensated(Id, "a is full; not released (unreachable): a", ["main", "b"], At);
        Assert.True(Verdict(undone, "the end matches").Ok); // the operator was told
    }
}
