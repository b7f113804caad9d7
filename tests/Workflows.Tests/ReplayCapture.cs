using System.Collections.Concurrent;
using Temporalio.Worker.Interceptors;
using Temporalio.Workflows;

namespace SEmigrate.Workflows.Tests;

/// <summary>Replay compares commands, not payloads: this interceptor records what the workflow passed
/// to each activity (name, task queue, argument) and what it returned, so tests can check them.</summary>
internal sealed class ReplayCapture : IWorkerInterceptor
{
    public ConcurrentQueue<(string Activity, string? TaskQueue, object? Input)> Scheduled { get; } = new();

    /// <summary>Child workflows started: type, id, argument.</summary>
    public ConcurrentQueue<(string Workflow, string? Id, object? Input)> Children { get; } = new();

    /// <summary>What the Web UI shows for each scheduled activity, in the same order.</summary>
    public ConcurrentQueue<string?> Summaries { get; } = new();

    public object? Result { get; private set; }

    /// <summary>The workflow object replayed, to read its queries' answers after the replay.</summary>
    public object? Instance { get; private set; }

    public WorkflowInboundInterceptor InterceptWorkflow(WorkflowInboundInterceptor nextInterceptor) => new Inbound(nextInterceptor, this);

    private sealed class Inbound(WorkflowInboundInterceptor next, ReplayCapture capture) : WorkflowInboundInterceptor(next)
    {
        public override void Init(WorkflowOutboundInterceptor outbound) => base.Init(new Outbound(outbound, capture));

        public override async Task<object?> ExecuteWorkflowAsync(ExecuteWorkflowInput input)
        {
            capture.Instance = input.Instance;
            var result = await base.ExecuteWorkflowAsync(input);
            capture.Result = result;
            return result;
        }
    }

    private sealed class Outbound(WorkflowOutboundInterceptor next, ReplayCapture capture) : WorkflowOutboundInterceptor(next)
    {
        public override Task<TResult> ScheduleActivityAsync<TResult>(ScheduleActivityInput input)
        {
            capture.Scheduled.Enqueue((input.Activity, input.Options.TaskQueue, input.Args.FirstOrDefault()));
            capture.Summaries.Enqueue(input.Options.Summary);
            return base.ScheduleActivityAsync<TResult>(input);
        }

        public override Task<ChildWorkflowHandle<TWorkflow, TResult>> StartChildWorkflowAsync<TWorkflow, TResult>(StartChildWorkflowInput input)
        {
            capture.Children.Enqueue((input.Workflow, input.Options.Id, input.Args.FirstOrDefault()));
            return base.StartChildWorkflowAsync<TWorkflow, TResult>(input);
        }
    }
}
