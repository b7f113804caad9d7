using SEmigrate.TestSupport;
using Temporalio.Activities;
using Temporalio.Client;
using Temporalio.Worker;
using Temporalio.Workflows;

namespace SEmigrate.Workflows.Tests;

/// <summary>Runs only against a real Temporal server; without one the tests report themselves
/// skipped, with the reason, at run time.</summary>
public class TemporalServerTests(TemporalFixture temporal) : IClassFixture<TemporalFixture>
{
    public sealed record Greeting(string Name);

    public sealed record Greeted(string Text);

    public sealed class GreetActivities
    {
        [Activity]
        public Greeted Greet(Greeting input) => new($"hello {input.Name}");
    }

    [Workflow]
    public sealed class GreetWorkflow
    {
        [WorkflowRun]
        public Task<Greeted> RunAsync(Greeting input) =>
            Workflow.ExecuteActivityAsync(
                (GreetActivities a) => a.Greet(input),
                new ActivityOptions { StartToCloseTimeout = TimeSpan.FromSeconds(30) });
    }

    [Fact]
    public async Task A_workflow_runs_its_activity_on_a_real_server()
    {
        Assert.SkipWhen(temporal.Client is null, temporal.SkipReason);
        var taskQueue = $"test-{Guid.NewGuid():N}";
        using var worker = new TemporalWorker(temporal.Client!, new TemporalWorkerOptions(taskQueue)
            .AddAllActivities(new GreetActivities())
            .AddWorkflow<GreetWorkflow>());
        var result = await worker.ExecuteAsync(
            () => temporal.Client!.ExecuteWorkflowAsync(
                (GreetWorkflow w) => w.RunAsync(new Greeting("vm-1")),
                new WorkflowOptions(id: taskQueue, taskQueue: taskQueue)),
            TestContext.Current.CancellationToken);
        Assert.Equal(new Greeted("hello vm-1"), result);
    }
}
