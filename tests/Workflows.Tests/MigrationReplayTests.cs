using SEmigrate.Contracts;
using SEmigrate.Contracts.Audit;
using SEmigrate.Contracts.Migration;
using Temporalio.Exceptions;
using Temporalio.Worker;
using SEmigrate.TestSupport;
using static SEmigrate.TestSupport.HistoryBuilder;

namespace SEmigrate.Workflows.Tests;

/// <summary>The Temporal workflow replayed against hand-built histories: the happy path, a transfer that
/// is retried, a transfer that fails for good (compensation), a cancel, and a history the workflow no
/// longer matches (which must fail). Replay checks that the workflow issues the same commands, in the
/// same order, with the same activity types.</summary>
public class MigrationReplayTests
{
    private static readonly MigrationRequest Request = new(Guid.Parse("11111111-2222-3333-4444-555555555555"), Guid.Parse("66666666-7777-8888-9999-000000000000"),
        "g1", "src", new Destination("main", 1000), [new Destination("sub-a", 1000), new Destination("sub-b", 1000)], MigrationMode.Semigrate, ["vaultdb"]);

    // Six chunks of 500 guest pages: main takes chunks 0-1, sub-a 2-3, sub-b 4-5.
    private static readonly IntrospectionResult Introspected = new(new PageCounts(1000, 200, 1800), 3072, 40, 12, [], 512, [500, 500, 500, 500, 500, 500], [300, 300, 300, 400, 400, 300]);

    private static readonly string[] Hosts = ["main", "sub-a", "sub-b"];

    private static Schedule Record() => new("RecordEvent", MigrationWorkflow.OrchestratorQueue);

    private static Schedule On(string activity, string host) => new(activity, StepQueues.Host(host));

    private static Upsert State(MigrationState state) => new(("SemigrateState", state.ToString()));

    private static TransferResult Transferred(string host) => new(host, 1000, 1_000_000, 0, 0, 1);

    private static Task<WorkflowReplayResult> ReplayAsync(Temporalio.Common.WorkflowHistory history, ReplayCapture? capture = null) =>
        new WorkflowReplayer(new WorkflowReplayerOptions { Interceptors = capture is null ? [] : [capture] }.AddWorkflow<MigrationWorkflow>())
            .ReplayWorkflowAsync(history, throwOnReplayFailure: true, TestContext.Current.CancellationToken);

    /// <summary>Which procedure recorded a history: today's (steps stop before anything is undone), the one
    /// before (the guest measured, placed and paging started before its introspection), the one before
    /// that (introspection first, the hand-over beside the transfers), or the first (the hand-over after
    /// the transfers).</summary>
    public enum Recorded
    {
        StepsStopFirst,
        PagingFirst,
        HandOverBeside,
        Original,
    }

    private static readonly GuestLayout Measured = new(Introspected.PfnLimit, Introspected.ChunkPages, Introspected.ChunkGuestPages, 0);

    /// <summary>The workflow's start and its request recorded; the next task decides the first step.</summary>
    private static void Requested(HistoryBuilder h, Recorded recorded = Recorded.StepsStopFirst)
    {
        h.Start("SplitMigration", MigrationWorkflow.OrchestratorQueue, Request);
        Command searchable = new Upsert(("SemigrateVm", Request.Vm.ToString()), ("SemigrateSource", "src"), ("SemigrateMain", "main"), ("SemigrateMode", "semigrate"),
            ("SemigrateState", "Requested"));
        var r = recorded == Recorded.StepsStopFirst
            ? h.Task(searchable, new Patch(MigrationProcedure.StepsStopBeforeUndo), Record())
            : h.Task(searchable, Record());
        h.Completed((r[0], null));
    }

    /// <summary>Recorded by a procedure that measured the guest before its introspection.</summary>
    private static bool Measures(Recorded recorded) => recorded is Recorded.StepsStopFirst or Recorded.PagingFirst;

    /// <summary>The introspection scheduled with <paramref name="with"/> in the same task, done and
    /// recorded (introspected, classified) with the state it leads to.</summary>
    private static void IntrospectedAfter(HistoryBuilder h, IntrospectionResult introspected, MigrationState after, params Command[] with)
    {
        var introspect = h.Task([.. with, On("Introspect", "src")]);
        h.Completed((introspect[^1], introspected));
        var r = h.Task(Record()); // introspected
        h.Completed((r[0], null));
        r = h.Task(State(after), Record()); // classified
        h.Completed((r[0], null));
    }

    /// <summary>Up to the transfers (and, since the hand-over moved, the hand-over beside them) being
    /// scheduled; returns their scheduled event ids, the hand-over's last.</summary>
    private static long[] UpToTransfers(HistoryBuilder h, Recorded recorded)
    {
        UpToPagingStarted(h, recorded);
        Command[] transfers = [On("TransferPages", "src"), On("TransferPages", "src"), On("TransferPages", "src")];
        switch (recorded)
        {
            case Recorded.StepsStopFirst or Recorded.PagingFirst:
                IntrospectedAfter(h, Introspected, MigrationState.Transferring, State(MigrationState.PagingStarted));
                return h.Task([.. transfers, On("HandOver", "src")]);
            // Recorded when the state after paging started read Transferring (the value is not replayed).
            case Recorded.HandOverBeside:
                return h.Task([State(MigrationState.Transferring), new Patch(MigrationProcedure.HandOverBesideTransfers), .. transfers, On("HandOver", "src")]);
            default:
                return h.Task([State(MigrationState.Transferring), .. transfers]);
        }
    }

    /// <summary>Up to paging started at every destination and recorded; the next task comes after it.</summary>
    private static void UpToPagingStarted(HistoryBuilder h, Recorded recorded)
    {
        Requested(h, recorded);
        if (Measures(recorded))
        {
            var measure = h.Task(new Patch(MigrationProcedure.PagingBeforePause), On("MeasureGuest", "src"));
            h.Completed((measure[0], Measured));
        }
        else
        {
            IntrospectedAfter(h, Introspected, MigrationState.Introspected);
        }
        var r = h.Task(Record()); // placed
        h.Completed((r[0], null));
        var starts = h.Task(State(MigrationState.Placed), On("StartPaging", "main"), On("StartPaging", "sub-a"), On("StartPaging", "sub-b"));
        h.Completed((starts[0], new PagingStarted("main", [1], [2])), (starts[1], new PagingStarted("sub-a", [3], null)), (starts[2], new PagingStarted("sub-b", [4], null)));
        r = h.Task(Record()); // paging servers started
        h.Completed((r[0], null));
    }

    /// <summary>The replayed compensation released every destination, let the source keep the VM and
    /// gave <paramref name="reason"/>.</summary>
    private static void AssertCompensatedEverywhere(ReplayCapture capture, string reason)
    {
        Assert.Equal(Hosts, capture.Scheduled.Where(s => s.Activity == "ReleasePaging").Select(s => ((ReleasePaging)s.Input!).Host));
        Assert.False(((ReleaseSource)capture.Scheduled.Single(s => s.Activity == "ReleaseSource").Input!).VmLeft);
        var outcome = Assert.IsType<MigrationOutcome>(capture.Result);
        Assert.Equal(MigrationState.Compensated, outcome.State);
        Assert.Contains(reason, outcome.Reason, StringComparison.Ordinal);
    }

    /// <summary>The end of a compensation: the releases scheduled come back, the source lets go of the
    /// key, the compensation is recorded and the workflow ends.</summary>
    private static void CompensatedAfter(HistoryBuilder h, long[] releases)
    {
        h.Completed([.. releases.Select((id, i) => (id, (object?)new PagingReleased(Hosts[i], 0)))]);
        var source = h.Task(On("ReleaseSource", "src"));
        h.Completed((source[0], new SourceReleased(false)));
        var r = h.Task(Record()); // compensated
        h.Completed((r[0], null));
        h.Task(State(MigrationState.Compensated), State(MigrationState.Compensated), new Complete(null));
    }

    /// <summary>The switch-over scheduled and done (<paramref name="meanwhile"/> happens while it runs), its
    /// event recorded, the source let go, the workflow ended.</summary>
    private static void SwitchesOver(HistoryBuilder h, Action<HistoryBuilder, long>? meanwhile = null)
    {
        var switchOver = h.Task(On("SwitchOver", "main"));
        meanwhile?.Invoke(h, switchOver[0]);
        h.Completed((switchOver[0], new SwitchedOverResult("main", 1000, 2000)));
        var r = h.Task(Record()); // switched over
        h.Completed((r[0], null));
        var release = h.Task(State(MigrationState.SwitchedOver), On("ReleaseSource", "src"));
        h.Completed((release[0], new SourceReleased(true)));
        h.Task(State(MigrationState.SwitchedOver), new Complete(null));
    }

    /// <summary>A migration that switches over, as <paramref name="recorded"/> recorded it.</summary>
    private static HistoryBuilder HappyPath(Action<HistoryBuilder, long[]>? beforeTransfersComplete = null, Recorded recorded = Recorded.StepsStopFirst)
    {
        var h = new HistoryBuilder();
        var scheduled = UpToTransfers(h, recorded);
        var handOverBeside = recorded != Recorded.Original;
        var transfers = scheduled[..3];
        beforeTransfersComplete?.Invoke(h, transfers);
        h.Completed([.. transfers.Select((t, i) => (t, (object?)Transferred(Hosts[i]))), .. handOverBeside ? [(scheduled[3], new HandedOver([9, 9], 4148))] : Array.Empty<(long, object?)>()]);
        var r = h.Task(Record(), Record(), Record()); // one per destination
        h.Completed([.. r.Select(id => (id, (object?)null))]);
        if (!handOverBeside)
        {
            var handOver = h.Task(On("HandOver", "src"));
            h.Completed((handOver[0], new HandedOver([9, 9], 4148)));
        }
        SwitchesOver(h);
        return h;
    }

    [Fact]
    public async Task The_happy_path_replays_with_the_placement_the_keys_and_the_outcome_it_should_have()
    {
        var capture = new ReplayCapture();
        var result = await ReplayAsync(HappyPath().Build(), capture);
        Assert.Null(result.ReplayFailure);

        // Placed and paging started while the guest still runs: it is paused (introspected) only then.
        Assert.Equal(["MeasureGuest", "StartPaging", "StartPaging", "StartPaging", "Introspect", "TransferPages"],
            capture.Scheduled.Select(s => s.Activity).Where(a => a != "RecordEvent").Take(6));
        // Until the guest is classified a destination prepares room for its whole share.
        Assert.All(capture.Scheduled.Where(s => s.Activity == "StartPaging").Select(s => (StartPaging)s.Input!), p => Assert.Equal(p.ExpectedPages, p.ArrivingPages));
        // The hand-over is scheduled with the transfers, before any of them is recorded as done.
        Assert.Equal(["TransferPages", "TransferPages", "TransferPages", "HandOver", "RecordEvent"],
            capture.Scheduled.Select(s => s.Activity).SkipWhile(a => a != "TransferPages").Take(5));
        // Each destination's transfer runs at the source with its own range, in placement order.
        var transfers = capture.Scheduled.Where(s => s.Activity == "TransferPages").ToList();
        Assert.All(transfers, t => Assert.Equal(StepQueues.Host("src"), t.TaskQueue));
        Assert.Equal(
            [new Assignment("main", 0, 1024, 1000), new Assignment("sub-a", 1024, 2048, 1000), new Assignment("sub-b", 2048, 3072, 1000)],
            transfers.Select(t => ((TransferPages)t.Input!).Assignment));
        Assert.All(transfers, t => Assert.Null(((TransferPages)t.Input!).ChannelKeyFor)); // semigrate mode: no key to any sub-host
        // The Web UI reads like the procedure: every activity says what it does, where.
        Assert.All(capture.Summaries, s => Assert.False(string.IsNullOrEmpty(s)));
        Assert.Contains("send 1000 pages [400, 800) to sub-a (semigrate)", capture.Summaries);
        Assert.Contains("switch VM 66666666-7777-8888-9999-000000000000 over to main", capture.Summaries);
        // The data key is wrapped for the main host's public key, and only the main host switches over.
        Assert.Equal([2], ((HandOver)capture.Scheduled.Single(s => s.Activity == "HandOver").Input!).MainPublicKey);
        var switchOver = capture.Scheduled.Single(s => s.Activity == "SwitchOver");
        Assert.Equal(StepQueues.Host("main"), switchOver.TaskQueue);
        Assert.Equal([9, 9], ((SwitchOver)switchOver.Input!).WrappedKey);
        var outcome = Assert.IsType<MigrationOutcome>(capture.Result);
        Assert.Equal(MigrationState.SwitchedOver, outcome.State);
        Assert.Equal(3, outcome.Transfers.Count);
    }

    [Fact]
    public async Task A_history_recorded_before_the_hand_over_moved_replays_it_after_the_transfers()
    {
        var capture = new ReplayCapture();
        var result = await ReplayAsync(HappyPath(recorded: Recorded.Original).Build(), capture);
        Assert.Null(result.ReplayFailure);
        var order = capture.Scheduled.Select(s => s.Activity).Where(a => a is "TransferPages" or "HandOver").ToList();
        Assert.Equal(["TransferPages", "TransferPages", "TransferPages", "HandOver"], order);
    }

    [Fact]
    public async Task A_history_recorded_before_steps_stopped_before_undo_replays()
    {
        var capture = new ReplayCapture();
        var result = await ReplayAsync(HappyPath(recorded: Recorded.PagingFirst).Build(), capture);
        Assert.Null(result.ReplayFailure);
        Assert.Equal(MigrationState.SwitchedOver, Assert.IsType<MigrationOutcome>(capture.Result).State);
    }

    [Fact]
    public async Task A_history_recorded_before_paging_started_ahead_of_the_pause_replays_introspection_first()
    {
        var capture = new ReplayCapture();
        var result = await ReplayAsync(HappyPath(recorded: Recorded.HandOverBeside).Build(), capture);
        Assert.Null(result.ReplayFailure);
        Assert.Equal(["Introspect", "StartPaging", "StartPaging", "StartPaging", "TransferPages", "TransferPages", "TransferPages", "HandOver", "SwitchOver"],
            capture.Scheduled.Select(s => s.Activity).Where(a => a is not ("RecordEvent" or "ReleaseSource")));
        // Then the classification was known: a destination prepared room only for the pages that travel.
        Assert.Equal([600, 700, 700], capture.Scheduled.Where(s => s.Activity == "StartPaging").Select(s => ((StartPaging)s.Input!).ArrivingPages));
    }

    [Fact]
    public async Task An_introspection_that_fails_once_paging_started_compensates_at_every_destination()
    {
        var h = new HistoryBuilder();
        UpToPagingStarted(h, Recorded.StepsStopFirst);
        var introspect = h.Task(State(MigrationState.PagingStarted), On("Introspect", "src"));
        h.Failed(introspect[0], "the guest's buddy allocator does not add up");
        CompensatedAfter(h, h.Task(On("ReleasePaging", "main"), On("ReleasePaging", "sub-a"), On("ReleasePaging", "sub-b")));

        var capture = new ReplayCapture();
        var result = await ReplayAsync(h.Build(), capture);
        Assert.Null(result.ReplayFailure);
        AssertCompensatedEverywhere(capture, "buddy allocator does not add up");
        Assert.Null(((MigrationOutcome)capture.Result!).Pages);
    }

    [Fact]
    public async Task A_history_without_the_hand_over_beside_the_transfers_does_not_pass_for_one_with_it()
    {
        // The new history with the hand-over dropped from beside the transfers: the workflow, which
        // sees the patch marker, schedules it there and must not match.
        var e = await Assert.ThrowsAsync<WorkflowNondeterminismException>(() =>
            ReplayAsync(HappyPath().BuildWithActivityTypeChanged("HandOver", "SwitchOver")));
        Assert.Contains("SwitchOver", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_transfer_that_failed_once_and_was_retried_replays()
    {
        var result = await ReplayAsync(HappyPath((h, transfers) => h.Retried(transfers[1])).Build());
        Assert.Null(result.ReplayFailure);
    }

    [Fact]
    public async Task A_transfer_that_fails_for_good_compensates_at_every_destination()
    {
        var h = new HistoryBuilder();
        var transfers = UpToTransfers(h, Recorded.Original);
        h.Completed((transfers[0], Transferred("main"))).Failed(transfers[1], "store full at sub-a").Completed((transfers[2], Transferred("sub-b")));
        var r = h.Task(Record(), Record()); // the two that finished
        h.Completed([.. r.Select(id => (id, (object?)null))]);
        CompensatedAfter(h, h.Task(On("ReleasePaging", "main"), On("ReleasePaging", "sub-a"), On("ReleasePaging", "sub-b")));

        var capture = new ReplayCapture();
        var result = await ReplayAsync(h.Build(), capture);
        Assert.Null(result.ReplayFailure);
        AssertCompensatedEverywhere(capture, "store full at sub-a");
    }

    [Fact]
    public async Task A_sub_host_that_lost_the_VM_mid_transfer_serves_it_again_gets_its_share_again_and_the_migration_switches_over()
    {
        var h = new HistoryBuilder();
        var scheduled = UpToTransfers(h, Recorded.StepsStopFirst);
        h.Completed((scheduled[0], Transferred("main")), (scheduled[2], Transferred("sub-b")), (scheduled[3], new HandedOver([9, 9], 4148)))
            .Failed(scheduled[1], "sub-a no longer holds VM 66666666: no queue", StepErrors.DestinationLost);
        var r = h.Task(Record(), Record(), Record()); // main and sub-b transferred, sub-a lost
        h.Completed([.. r.Select(id => (id, (object?)null))]);
        var restart = h.Task(On("StartPaging", "sub-a"));
        h.Completed((restart[0], new PagingStarted("sub-a", [5], null, HeldPages: 0)));
        var again = h.Task(On("TransferPages", "src"));
        h.Completed((again[0], Transferred("sub-a")));
        r = h.Task(Record()); // sub-a transferred
        h.Completed((r[0], null));
        SwitchesOver(h);

        var capture = new ReplayCapture();
        var result = await ReplayAsync(h.Build(), capture);
        Assert.Null(result.ReplayFailure);
        var starts = capture.Scheduled.Where(s => s.Activity == "StartPaging").Select(s => (StartPaging)s.Input!).Where(s => s.Host == "sub-a").ToList();
        Assert.Equal([1, 2], starts.Select(s => s.Round));
        Assert.Equal(starts[0] with { Round = 2 }, starts[1]);
        var resent = capture.Scheduled.Where(s => s.Activity == "TransferPages").Select(s => (TransferPages)s.Input!).Last();
        Assert.Equal(("sub-a", 2, true), (resent.Assignment.Host, resent.Round, resent.StartOver));
        Assert.Null(resent.ChannelKeyFor); // semigrate: no channel key, in any round
        var lost = Assert.Single(capture.Scheduled.Where(s => s.Activity == "RecordEvent").Select(s => ((RecordEvent)s.Input!).Event).OfType<DestinationLost>());
        Assert.Equal(("sub-a", 2), (lost.Host, lost.Round));
        Assert.Contains("no longer holds", lost.Reason, StringComparison.Ordinal);
        Assert.Equal(MigrationState.SwitchedOver, Assert.IsType<MigrationOutcome>(capture.Result).State);
    }

    /// <summary>Today's cancel during the transfers, asked for by <paramref name="cancel"/>: the steps are
    /// asked to stop, and only once they have stopped is anything released. The transfer to main had
    /// sent its last batch and finishes (the workflow waited for it, so it is recorded); the others stop.</summary>
    private static HistoryBuilder CancelledDuringTransfers(Action<HistoryBuilder> cancel)
    {
        var h = new HistoryBuilder();
        var scheduled = UpToTransfers(h, Recorded.StepsStopFirst);
        cancel(h);
        h.Task([.. scheduled.Select(s => new CancelActivity(s))]); // the three transfers and the hand-over
        h.Completed((scheduled[0], Transferred("main"))).Canceled(scheduled[1..]);
        var r = h.Task(Record()); // main transferred
        h.Completed((r[0], null));
        CompensatedAfter(h, h.Task(On("ReleasePaging", "main"), On("ReleasePaging", "sub-a"), On("ReleasePaging", "sub-b")));
        return h;
    }

    [Theory]
    [InlineData("signal")]
    [InlineData("ui")]
    public async Task A_cancel_during_the_transfers_releases_only_once_every_step_has_stopped_signalled_or_from_the_UI(string how)
    {
        var h = CancelledDuringTransfers(h => _ = how == "signal" ? h.Signaled("Cancel", new CancelMigration("maintenance window over")) : h.CancelRequested("maintenance window over"));

        var capture = new ReplayCapture();
        var result = await ReplayAsync(h.Build(), capture);
        Assert.Null(result.ReplayFailure);
        AssertCompensatedEverywhere(capture, "cancelled: ");
        var recorded = capture.Scheduled.Where(s => s.Activity == "RecordEvent").Select(s => ((RecordEvent)s.Input!).Event).ToList();
        Assert.Equal("main", Assert.Single(recorded.OfType<DestinationTransferred>()).Host);
        // The compensation's event is recorded whatever cancelled the workflow.
        Assert.Single(recorded.OfType<MigrationCompensated>());
    }

    [Fact]
    public async Task Transfers_signal_their_progress_which_the_Progress_query_shows_without_changing_the_procedure()
    {
        var h = HappyPath((h, _) =>
        {
            h.Signaled(TransferProgress.Signal, new TransferProgress(Request.MigrationId, "sub-a", 1536, 480, 1000, 2_000_000));
            h.Signaled(TransferProgress.Signal, new TransferProgress(Request.MigrationId, "main", 1024, 1000, 1000, 4_000_000));
            h.Signaled(TransferProgress.Signal, new TransferProgress(Request.MigrationId, "sub-a", 1200, 100, 1000, 500_000)); // late, older
            h.Signaled(TransferProgress.Signal, new TransferProgress(Guid.NewGuid(), "sub-b", 3000, 900, 1000, 1)); // another migration's
            h.Task(); // signals only: no command
        });

        var capture = new ReplayCapture();
        var result = await ReplayAsync(h.Build(), capture);
        Assert.Null(result.ReplayFailure);
        Assert.Equal(MigrationState.SwitchedOver, Assert.IsType<MigrationOutcome>(capture.Result).State);
        var live = Assert.IsType<MigrationWorkflow>(capture.Instance).Progress().Live!;
        Assert.Equal([("main", 1000L), ("sub-a", 480L)], live.Select(p => (p.Host, p.PagesSent)));
    }

    [Fact]
    public async Task A_transfer_that_fails_for_good_stops_the_others_before_anything_is_undone_and_is_the_reason()
    {
        var h = new HistoryBuilder();
        var scheduled = UpToTransfers(h, Recorded.StepsStopFirst);
        h.Failed(scheduled[1], "store full at sub-a");
        h.Task(new CancelActivity(scheduled[0]), new CancelActivity(scheduled[2])); // not the hand-over: it is not a transfer
        h.Canceled(scheduled[0], scheduled[2]).Completed((scheduled[3], new HandedOver([9, 9], 4148)));
        CompensatedAfter(h, h.Task(On("ReleasePaging", "main"), On("ReleasePaging", "sub-a"), On("ReleasePaging", "sub-b")));

        var capture = new ReplayCapture();
        var result = await ReplayAsync(h.Build(), capture);
        Assert.Null(result.ReplayFailure);
        AssertCompensatedEverywhere(capture, "store full at sub-a");
    }

    [Fact]
    public async Task A_cancel_that_comes_while_the_main_host_takes_the_VM_over_undoes_nothing_and_says_so()
    {
        var h = new HistoryBuilder();
        var scheduled = UpToTransfers(h, Recorded.StepsStopFirst);
        h.Completed([.. scheduled[..3].Select((t, i) => (t, (object?)Transferred(Hosts[i]))), (scheduled[3], new HandedOver([9, 9], 4148))]);
        var r = h.Task(Record(), Record(), Record());
        h.Completed([.. r.Select(id => (id, (object?)null))]);
        SwitchesOver(h, (h, switchOver) =>
        {
            h.CancelRequested("operator changed their mind");
            h.Task(new CancelActivity(switchOver)); // past its point of no return, the switch-over finishes
        });

        var capture = new ReplayCapture();
        var result = await ReplayAsync(h.Build(), capture);
        Assert.Null(result.ReplayFailure);
        var outcome = Assert.IsType<MigrationOutcome>(capture.Result);
        Assert.Equal(MigrationState.SwitchedOver, outcome.State);
        Assert.Contains("came after the main host had taken the VM over: nothing was undone", outcome.Reason, StringComparison.Ordinal);
        Assert.True(((ReleaseSource)capture.Scheduled.Single(s => s.Activity == "ReleaseSource").Input!).VmLeft);
        Assert.DoesNotContain(capture.Scheduled, s => s.Activity == "ReleasePaging");
    }

    /// <summary>The history recorded before steps stopped first: the cancel requests and the releases went
    /// out in one workflow task, and it still replays so.</summary>
    [Fact]
    public async Task A_cancel_during_the_transfers_stops_them_and_compensates()
    {
        var h = new HistoryBuilder();
        var transfers = UpToTransfers(h, Recorded.Original);
        h.Signaled("Cancel", new CancelMigration("maintenance window over"));
        // The cancel requests and the compensation's releases go out in the same workflow task.
        CompensatedAfter(h, h.Task(new CancelActivity(transfers[0]), new CancelActivity(transfers[1]), new CancelActivity(transfers[2]),
            On("ReleasePaging", "main"), On("ReleasePaging", "sub-a"), On("ReleasePaging", "sub-b")));

        var capture = new ReplayCapture();
        var result = await ReplayAsync(h.Build(), capture);
        Assert.Null(result.ReplayFailure);
        var outcome = Assert.IsType<MigrationOutcome>(capture.Result);
        Assert.Equal(MigrationState.Compensated, outcome.State);
        Assert.StartsWith("cancelled: maintenance window over", outcome.Reason, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Destinations_too_small_refuse_the_migration_before_anything_moves()
    {
        var h = new HistoryBuilder();
        Requested(h);
        var measure = h.Task(new Patch(MigrationProcedure.PagingBeforePause), On("MeasureGuest", "src"));
        h.Completed((measure[0], Measured with { ChunkGuestPages = [500, 500, 500, 500, 500, 500, 500] })); // 3500 pages, room for 3000
        var r = h.Task(Record()); // refused
        h.Completed((r[0], null));
        h.Task(State(MigrationState.Refused), State(MigrationState.Refused), new Complete(null));

        var capture = new ReplayCapture();
        var result = await ReplayAsync(h.Build(), capture);
        Assert.Null(result.ReplayFailure);
        Assert.DoesNotContain(capture.Scheduled, s => s.Activity is "StartPaging" or "Introspect" or "TransferPages");
        var outcome = Assert.IsType<MigrationOutcome>(capture.Result);
        Assert.Equal(MigrationState.Refused, outcome.State);
        Assert.Contains("3500 pages but the destinations hold 3000", outcome.Reason, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_history_with_another_step_order_fails_with_a_nondeterminism_error()
    {
        var changed = HappyPath().BuildWithActivityTypeChanged("Introspect", "ClassifyFirst");

        var e = await Assert.ThrowsAsync<WorkflowNondeterminismException>(() => ReplayAsync(changed));
        Assert.Contains("'ClassifyFirst' does not match activity type of activity command 'Introspect'", e.Message, StringComparison.Ordinal);
    }
}
