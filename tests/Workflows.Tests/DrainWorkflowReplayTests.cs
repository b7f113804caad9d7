using SEmigrate.Contracts;
using SEmigrate.Contracts.Migration;
using SEmigrate.TestSupport;
using Temporalio.Worker;
using static SEmigrate.TestSupport.HistoryBuilder;

namespace SEmigrate.Workflows.Tests;

/// <summary>The Temporal drain workflow replayed: the inventory read on the orchestrator's queue, a
/// child SplitMigration (id `migration-VM`) for the guest there is room for, the other refused.</summary>
public class DrainWorkflowReplayTests
{
    private static readonly DrainHost Drain = new(Guid.Parse("99999999-8888-7777-6666-555555555555"), "h1", MigrationMode.Semigrate, ["vaultdb"], 2);

    private static readonly DrainInventory Inventory = new(
        [new DrainGuest("web", 65_600, true), new DrainGuest("big", 500_000, false)],
        [new DrainTarget("main-1", true, true, 200_000), new DrainTarget("sub-1", false, true, 40_000)]);

    [Fact]
    public async Task A_drain_of_two_guests_migrates_the_one_that_fits_as_a_child_and_reports_the_other_refused()
    {
        var web = Inventory.Guests[0];
        var (vm, migration) = (DrainProcedure.IdOf(Drain, web, "vm"), DrainProcedure.IdOf(Drain, web, "migration"));
        var h = new HistoryBuilder();
        h.Start("DrainHost", MigrationWorkflow.OrchestratorQueue, Drain);
        var read = h.Task(new Schedule(DrainWorkflow.InventoryActivity, MigrationWorkflow.OrchestratorQueue));
        h.Completed((read[0], Inventory));
        var child = h.Task(new StartChild("SplitMigration", $"migration-{vm}", MigrationWorkflow.OrchestratorQueue));
        h.ChildrenCompleted((child[0], new MigrationOutcome(migration, MigrationState.SwitchedOver, null, null, [], null, null)));
        h.Task(new Complete(null));

        var capture = new ReplayCapture();
        var result = await new WorkflowReplayer(new WorkflowReplayerOptions { Interceptors = [capture] }.AddWorkflow<DrainWorkflow>())
            .ReplayWorkflowAsync(h.Build("drain-h1"), throwOnReplayFailure: true, TestContext.Current.CancellationToken);

        Assert.Null(result.ReplayFailure);
        Assert.Equal("h1", ((ReadInventory)capture.Scheduled.Single().Input!).Host);
        var (workflow, id, input) = Assert.Single(capture.Children);
        Assert.Equal(("SplitMigration", $"migration-{vm}"), (workflow, id));
        var request = Assert.IsType<MigrationRequest>(input);
        Assert.Equal(("web", "h1", "main-1", migration), (request.Guest, request.Source, request.Main.Host, request.MigrationId));
        var report = Assert.IsType<DrainReport>(capture.Result);
        Assert.Equal(("web", "main-1", MigrationState.SwitchedOver), (report.Moved.Single().Vm, report.Moved.Single().To, report.Moved.Single().State));
        Assert.StartsWith("no room: it has 500000 pages", Assert.Single(report.NotMoved, n => n.Vm == "big").Reason, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_child_undone_because_its_main_host_had_no_worker_is_followed_by_another_child_placed_without_that_host()
    {
        var inventory = new DrainInventory([new DrainGuest("web", 65_600, true)],
            [new DrainTarget("main-1", true, true, 200_000), new DrainTarget("main-2", true, true, 150_000)]);
        var web = inventory.Guests[0];
        var vm = DrainProcedure.IdOf(Drain, web, "vm");
        var (first, second) = (DrainProcedure.IdOf(Drain, web, "migration"), DrainProcedure.IdOf(Drain, web, "migration-2"));
        var h = new HistoryBuilder();
        h.Start("DrainHost", MigrationWorkflow.OrchestratorQueue, Drain);
        var read = h.Task(new Schedule(DrainWorkflow.InventoryActivity, MigrationWorkflow.OrchestratorQueue));
        h.Completed((read[0], inventory));
        var child = h.Task(new StartChild("SplitMigration", $"migration-{vm}", MigrationWorkflow.OrchestratorQueue));
        h.ChildrenCompleted((child[0], new MigrationOutcome(first, MigrationState.Compensated, "no worker of host main-1 took the step", null, [], null, null,
            Unreachable: "main-1")));
        var again = h.Task(new StartChild("SplitMigration", $"migration-{vm}", MigrationWorkflow.OrchestratorQueue));
        h.ChildrenCompleted((again[0], new MigrationOutcome(second, MigrationState.SwitchedOver, null, null, [], null, null)));
        h.Task(new Complete(null));

        var capture = new ReplayCapture();
        var result = await new WorkflowReplayer(new WorkflowReplayerOptions { Interceptors = [capture] }.AddWorkflow<DrainWorkflow>())
            .ReplayWorkflowAsync(h.Build("drain-h1-again"), throwOnReplayFailure: true, TestContext.Current.CancellationToken);

        Assert.Null(result.ReplayFailure);
        Assert.Equal(2, capture.Children.Count);
        var requests = capture.Children.Select(c => Assert.IsType<MigrationRequest>(c.Input)).ToList();
        Assert.Equal([("main-1", first), ("main-2", second)], requests.Select(r => (r.Main.Host, r.MigrationId)));
        var report = Assert.IsType<DrainReport>(capture.Result);
        Assert.Equal(("web", "main-2", second), (report.Moved.Single().Vm, report.Moved.Single().To, report.Moved.Single().MigrationId));
        Assert.Empty(report.NotMoved);
    }
}
