using SEmigrate.Contracts.Audit;
using Temporalio.Api.Enums.V1;
using Temporalio.Common;
using Temporalio.Converters;
using Temporalio.Worker;

namespace SEmigrate.Workflows;

/// <summary>A SplitMigration workflow's history as an auditor reads it (`temporal workflow show --output
/// json`): replayed against today's workflow code, and the lifecycle events its RecordEvent activities
/// carried, and the undo and release steps that completed.</summary>
public static class MigrationHistory
{
    /// <summary>Why the history is not one of a SplitMigration workflow; null if it is. (Temporal's replayer
    /// does not fail on a history without its start: it hangs.)</summary>
    public static string? NotAMigration(WorkflowHistory history) =>
        history.Events.FirstOrDefault() is not { EventType: EventType.WorkflowExecutionStarted } first
            ? "it does not begin with the workflow's start"
            : first.WorkflowExecutionStartedEventAttributes.WorkflowType?.Name is var type && type != "SplitMigration"
                ? $"it is a history of workflow type '{type}', not SplitMigration"
                : null;

    /// <summary>Null if today's workflow code makes the commands the history recorded, else why not.</summary>
    public static async Task<string?> ReplayAsync(WorkflowHistory history, CancellationToken ct)
    {
        if (NotAMigration(history) is { } why)
        {
            throw new ArgumentException(why, nameof(history));
        }
        var replayer = new WorkflowReplayer(new WorkflowReplayerOptions().AddWorkflow<MigrationWorkflow>());
        var result = await replayer.ReplayWorkflowAsync(history, throwOnReplayFailure: false, ct);
        return result.ReplayFailure?.Message;
    }

    /// <summary>The lifecycle events the workflow recorded, in the order it scheduled them.</summary>
    public static IReadOnlyList<IMigrationEvent> RecordedEvents(WorkflowHistory history) =>
        [.. Scheduled(history).Where(s => s.Type == "RecordEvent" && s.Input is not null)
            .Select(s => DataConverter.Default.PayloadConverter.ToValue<RecordEvent>(s.Input!).Event)];

    /// <summary>The inputs of the activities of <paramref name="activityType"/> that completed.</summary>
    public static IReadOnlyList<T> Completed<T>(WorkflowHistory history, string activityType)
    {
        var completed = history.Events.Where(e => e.EventType == EventType.ActivityTaskCompleted)
            .Select(e => e.ActivityTaskCompletedEventAttributes.ScheduledEventId).ToHashSet();
        return [.. Scheduled(history).Where(s => s.Type == activityType && completed.Contains(s.EventId) && s.Input is not null)
            .Select(s => DataConverter.Default.PayloadConverter.ToValue<T>(s.Input!))];
    }

    private static IEnumerable<(long EventId, string Type, Temporalio.Api.Common.V1.Payload? Input)> Scheduled(WorkflowHistory history) =>
        history.Events.Where(e => e.EventType == EventType.ActivityTaskScheduled).Select(e => (e.EventId, e.ActivityTaskScheduledEventAttributes.ActivityType.Name,
            e.ActivityTaskScheduledEventAttributes.Input?.Payloads_.FirstOrDefault()));
}
