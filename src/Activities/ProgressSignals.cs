using System.Diagnostics;
using Microsoft.Extensions.Logging;
using SEmigrate.Contracts.Migration;
using Temporalio.Activities;

namespace SEmigrate.Activities;

/// <summary>A transfer's progress for its workflow's Progress query. Temporal keeps an activity's
/// heartbeats from its workflow, so the transfer signals it too, sparsely, since every signal is a
/// history event: the first beat, then at most every 5 s and only after 2% more pages or a minute, and
/// the last one. Sent one at a time, in order, off the transfer's path; a signal that fails is logged
/// (the workflow may have ended) and never fails or holds up the transfer. Outside Temporal it does nothing.</summary>
internal sealed class ProgressSignals(ILogger logger)
{
    private static readonly TimeSpan MinEvery = TimeSpan.FromSeconds(5);
    private static readonly TimeSpan MaxEvery = TimeSpan.FromMinutes(1);
    private readonly Stopwatch since = new();
    private long lastPages = -1;
    private Task sending = Task.CompletedTask;

    /// <summary>Sends <paramref name="beat"/> if it is due; the <paramref name="last"/> one always is.</summary>
    public void Offer(TransferProgress beat, bool last)
    {
        if (!ActivityExecutionContext.HasCurrent || ActivityExecutionContext.Current is not { Info.WorkflowId: { } workflow } context)
        {
            return;
        }
        lock (since)
        {
            var due = last || lastPages < 0
                || (since.Elapsed >= MinEvery && (beat.PagesSent - lastPages >= beat.PagesTotal / 50 || since.Elapsed >= MaxEvery));
            if (!due || (!last && !sending.IsCompleted))
            {
                return;
            }
            (lastPages, sending) = (beat.PagesSent, SendAsync(sending, context, workflow, beat));
            since.Restart();
        }
    }

    private async Task SendAsync(Task before, ActivityExecutionContext context, string workflow, TransferProgress beat)
    {
        await before;
        try
        {
            await context.TemporalClient.GetWorkflowHandle(workflow, context.Info.WorkflowRunId)
                .SignalAsync(TransferProgress.Signal, [beat]);
        }
#pragma warning disable CA1031 // progress is best effort: the transfer goes on whatever happens to its signal
        catch (Exception e)
#pragma warning restore CA1031
        {
            logger.LogDebug("progress of the transfer to {Host} not signalled to workflow {Workflow}: {Why}", beat.Host, workflow, e.Message);
        }
    }
}
