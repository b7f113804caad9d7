using SEmigrate.Contracts.Migration;
using Temporalio.Workflows;

namespace SEmigrate.Workflows;

/// <summary>Host maintenance on Temporal: <see cref="DrainProcedure"/>, each guest's migration a child
/// SplitMigration (its id `migration-VM`, so a VM already migrating is refused), the inventory read by
/// an activity on the orchestrator's queue. Runnable now or from a Temporal schedule.</summary>
[Workflow("DrainHost")]
public sealed class DrainWorkflow
{
    /// <summary>The inventory activity's name: it reads Marten, so it lives with the orchestrator's worker
    /// (Workers), which this project does not reference; the workflow names it.</summary>
    public const string InventoryActivity = "DrainInventory";

    /// <summary>An empty drain id (a schedule's runs) gets a new one here, so each run's guests get new ids.</summary>
    [WorkflowRun]
    public Task<DrainReport> RunAsync(DrainHost drain) =>
        new DrainProcedure(new Steps()).RunAsync(drain.DrainId == Guid.Empty ? drain with { DrainId = Workflow.NewGuid() } : drain, Workflow.CancellationToken);

    private sealed class Steps : IDrainSteps
    {
        public Task<DrainInventory> InventoryAsync(string host, CancellationToken ct) =>
            Workflow.ExecuteActivityAsync<DrainInventory>(InventoryActivity, [new ReadInventory(host)], new ActivityOptions
            {
                TaskQueue = MigrationWorkflow.OrchestratorQueue,
                StartToCloseTimeout = TimeSpan.FromMinutes(1),
                Summary = $"read the fleet inventory for {host}",
                CancellationToken = ct,
            });

        public Task<T[]> WhenAllAsync<T>(IEnumerable<Task<T>> steps) => Workflow.WhenAllAsync(steps);

        public Task<MigrationOutcome> MigrateAsync(MigrationRequest request, CancellationToken ct)
        {
            var options = MigrationWorkflow.StartOptions(request);
            return Workflow.ExecuteChildWorkflowAsync((MigrationWorkflow w) => w.RunAsync(request), new ChildWorkflowOptions
            {
                Id = options.Id,
                TaskQueue = options.TaskQueue,
                StaticSummary = options.StaticSummary,
                CancellationToken = ct,
            });
        }
    }
}
