using SEmigrate.Contracts;
using SEmigrate.Contracts.Audit;
using SEmigrate.Contracts.Migration;
using SEmigrate.TestSupport;
using SEmigrate.Workflows;
using static SEmigrate.TestSupport.HistoryBuilder;

namespace SEmigrate.Workers.Tests;

/// <summary>`semigrate audit --history FILE` on a Temporal history exported as JSON: a migration's
/// history replays against today's workflow code and its recorded events pass the invariants; a
/// history the code no longer matches, or whose events do not add up, fails, naming why.</summary>
public class HistoryAuditTests
{
    private static readonly Guid Id = Guid.Parse("11111111-2222-3333-4444-555555555555");
    private static readonly Guid Vm = Guid.Parse("66666666-7777-8888-9999-000000000000");
    private static readonly DateTimeOffset At = DateTimeOffset.UnixEpoch;
    private static readonly MigrationRequest Request = new(Id, Vm, "g1", "src", new Destination("main", 1000),
        [new Destination("sub-a", 1000), new Destination("sub-b", 1000)], MigrationMode.Semigrate, ["vaultdb"]);
    private static readonly Assignment[] Placed = [new("main", 0, 1024, 1000), new("sub-a", 1024, 2048, 1000), new("sub-b", 2048, 3072, 1000)];

    private static Schedule Record(IMigrationEvent e) => new("RecordEvent", MigrationWorkflow.OrchestratorQueue, new RecordEvent(e));

    private static Schedule On(string activity, string host, object? input = null) => new(activity, StepQueues.Host(host), input);

    private static Upsert State(MigrationState state) => new(("SemigrateState", state.ToString()));

    private static DestinationTransferred Transferred(string host, long zero, long plain, long sealedPages) =>
        new(Id, host, 1000, 1_000_000, 0, 0, 1, At, new PageCounts(zero, plain, sealedPages), new PageCounts(zero, plain, sealedPages),
            [host switch { "main" => 1u, "sub-a" => 2u, _ => 3u }]);

    /// <summary>A migration that switches over, as today's workflow records it, each RecordEvent with its event.</summary>
    private static HistoryBuilder SwitchedOver(DestinationTransferred? toSubA = null)
    {
        var h = new HistoryBuilder();
        h.Start("SplitMigration", MigrationWorkflow.OrchestratorQueue, Request);
        void Recorded(params IMigrationEvent[] events) => h.Completed([.. h.Task([.. events.Select(Record)]).Select(id => (id, (object?)null))]);
        var r = h.Task(new Upsert(("SemigrateVm", Vm.ToString()), ("SemigrateSource", "src"), ("SemigrateMain", "main"), ("SemigrateMode", "semigrate"),
            ("SemigrateState", "Requested")), new Patch(MigrationProcedure.StepsStopBeforeUndo),
            Record(new MigrationRequested(Id, Vm, "src", "main", ["sub-a", "sub-b"], "semigrate", At)));
        h.Completed((r[0], null));
        var measure = h.Task(new Patch(MigrationProcedure.PagingBeforePause), On("MeasureGuest", "src"));
        h.Completed((measure[0], new GuestLayout(3072, 512, [500, 500, 500, 500, 500, 500], 0)));
        Recorded(new PagesPlaced(Id, Placed, At));
        var starts = h.Task(State(MigrationState.Placed), On("StartPaging", "main"), On("StartPaging", "sub-a"), On("StartPaging", "sub-b"));
        h.Completed((starts[0], new PagingStarted("main", [1], [2])), (starts[1], new PagingStarted("sub-a", [3], null)), (starts[2], new PagingStarted("sub-b", [4], null)));
        Recorded(new PagingServersStarted(Id, ["main", "sub-a", "sub-b"], At));
        var introspect = h.Task(State(MigrationState.PagingStarted), On("Introspect", "src"));
        h.Completed((introspect[0], new IntrospectionResult(new PageCounts(1000, 200, 1800), 3072, 40, 12, [], 512, [500, 500, 500, 500, 500, 500], [300, 300, 300, 400, 400, 300])));
        Recorded(new GuestIntrospected(Id, 40, 12, [], At));
        r = h.Task(State(MigrationState.Transferring), Record(new PagesClassified(Id, 1000, 200, 1800, At)));
        h.Completed((r[0], null));
        var transfers = h.Task(On("TransferPages", "src"), On("TransferPages", "src"), On("TransferPages", "src"), On("HandOver", "src"));
        h.Completed((transfers[0], new TransferResult("main", 1000, 1, 0, 0, 1)), (transfers[1], new TransferResult("sub-a", 1000, 1, 0, 0, 1)),
            (transfers[2], new TransferResult("sub-b", 1000, 1, 0, 0, 1)), (transfers[3], new HandedOver([9, 9], 4148, "AB12")));
        Recorded(Transferred("main", 300, 100, 600), toSubA ?? Transferred("sub-a", 300, 100, 600), Transferred("sub-b", 400, 0, 600));
        var switchOver = h.Task(On("SwitchOver", "main", new SwitchOver(Id, Vm, "main", MigrationMode.Semigrate, [9, 9], new PlacementPlan(Placed))));
        h.Completed((switchOver[0], new SwitchedOverResult("main", 1000, 2000, ManifestDigest: "AB12")));
        Recorded(new MigrationSwitchedOver(Id, "main", 1000, 2000, At, "AB12", "AB12", ManifestEpoch: 9));
        var release = h.Task(State(MigrationState.SwitchedOver), On("ReleaseSource", "src", new ReleaseSource(Id, Vm, VmLeft: true)));
        h.Completed((release[0], new SourceReleased(true)));
        h.Task(State(MigrationState.SwitchedOver), new Complete(null));
        return h;
    }

    private static async Task<SemigrateProcess.Result> AuditAsync(Temporalio.Common.WorkflowHistory history, params string[] more)
    {
        var file = Path.Combine(Directory.CreateTempSubdirectory("semigrate-history-").FullName, "migration.json");
        await File.WriteAllTextAsync(file, history.ToJson(), TestContext.Current.CancellationToken);
        try
        {
            return await SemigrateProcess.RunAsync(new Dictionary<string, string>(), ["audit", "--history", file, .. more]);
        }
        finally
        {
            Directory.Delete(Path.GetDirectoryName(file)!, recursive: true);
        }
    }

    [Fact]
    public async Task A_migration_history_replays_and_its_events_pass_every_invariant()
    {
        var audit = await AuditAsync(SwitchedOver().Build());
        Assert.True(audit.ExitCode == 0, audit.Stdout + audit.Stderr);
        Assert.Contains("ok      replay: today's workflow code makes the commands", audit.Stdout, StringComparison.Ordinal);
        Assert.Contains("ok      no page classified sealed sent unsealed: 1800 pages sealed", audit.Stdout, StringComparison.Ordinal);
        Assert.Contains("ok      the end matches the events: SwitchedOver", audit.Stdout, StringComparison.Ordinal);
        Assert.Contains("audit passed", audit.Stdout, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_history_the_workflow_no_longer_matches_fails_its_replay()
    {
        var audit = await AuditAsync(SwitchedOver().BuildWithActivityTypeChanged("Introspect", "ClassifyFirst"), "--json");
        Assert.Equal(1, audit.ExitCode);
        Assert.Contains("nondeterminism", audit.Stdout, StringComparison.Ordinal);
        Assert.Contains("ClassifyFirst", audit.Stdout, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_history_whose_events_say_a_sealed_page_went_in_the_clear_fails_that_invariant()
    {
        var lying = new DestinationTransferred(Id, "sub-a", 1000, 1_000_000, 0, 0, 1, At, new PageCounts(300, 100, 600), new PageCounts(300, 700, 0), [2]);
        var audit = await AuditAsync(SwitchedOver(toSubA: lying).Build());
        Assert.Equal(1, audit.ExitCode);
        Assert.Contains("FAILED  no page classified sealed sent unsealed: sub-a: 600 pages classified sealed travelled unsealed", audit.Stdout, StringComparison.Ordinal);
        Assert.Contains("ok      replay", audit.Stdout, StringComparison.Ordinal); // replay does not compare payloads: the invariants do
    }

    [Fact]
    public async Task Bad_input_gets_a_clear_error()
    {
        var missing = await SemigrateProcess.RunAsync(new Dictionary<string, string>(), "audit", "--history", "/nonexistent/history.json");
        Assert.Equal(2, missing.ExitCode);
        Assert.Contains("no file", missing.Stderr, StringComparison.Ordinal);
        var file = Path.GetTempFileName();
        try
        {
            await File.WriteAllTextAsync(file, "{ not a history", TestContext.Current.CancellationToken);
            var garbage = await SemigrateProcess.RunAsync(new Dictionary<string, string>(), "audit", "--history", file);
            Assert.Equal(2, garbage.ExitCode);
            Assert.Contains("is not a workflow history", garbage.Stderr, StringComparison.Ordinal);
            await File.WriteAllTextAsync(file, "{}", TestContext.Current.CancellationToken); // Temporal's replayer would hang on it
            var empty = await SemigrateProcess.RunAsync(new Dictionary<string, string>(), "audit", "--history", file);
            Assert.Equal(2, empty.ExitCode);
            Assert.Contains("does not begin with the workflow's start", empty.Stderr, StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(file);
        }
        var neither = await SemigrateProcess.RunAsync(new Dictionary<string, string>(), "audit");
        Assert.Equal(2, neither.ExitCode);
        Assert.Contains("give a migration id, or --history FILE", neither.Stderr, StringComparison.Ordinal);
    }
}
