using Google.Protobuf.WellKnownTypes;
using Temporalio.Api.Common.V1;
using Temporalio.Api.Enums.V1;
using Temporalio.Api.Failure.V1;
using Temporalio.Api.History.V1;
using Temporalio.Api.Sdk.V1;
using Temporalio.Api.TaskQueue.V1;
using Temporalio.Common;
using Temporalio.Converters;

namespace SEmigrate.TestSupport;

/// <summary>Builds a workflow history by hand, event by event, as the server would record it: the
/// workflow's start, then per workflow task the commands it completed with (activities scheduled, search
/// attributes upserted, activity cancels, the end), and what came back (activity results and failures,
/// signals). The first completed task carries the SDK's core flags, without which replay would not check
/// activity types (see shared/notes/temporal.md).</summary>
public sealed class HistoryBuilder
{
    private readonly List<HistoryEvent> events = [];
    private readonly DateTime start = new(2026, 11, 26, 12, 0, 0, DateTimeKind.Utc);
    private readonly Dictionary<long, long> startedOf = [];
    private readonly Dictionary<long, int> attempts = [];
    private int activities;
    private bool flagged;

    private static Payloads Payloads(object? value) => new() { Payloads_ = { DataConverter.Default.PayloadConverter.ToPayload(value) } };

    private HistoryEvent Add(EventType type, Action<HistoryEvent> fill)
    {
        var e = new HistoryEvent { EventId = events.Count + 1, EventType = type, EventTime = Timestamp.FromDateTime(start.AddMilliseconds(events.Count * 10)) };
        fill(e);
        events.Add(e);
        return e;
    }

    public HistoryBuilder Start(string workflowType, string taskQueue, object input)
    {
        Add(EventType.WorkflowExecutionStarted, e => e.WorkflowExecutionStartedEventAttributes = new WorkflowExecutionStartedEventAttributes
        {
            WorkflowType = new WorkflowType { Name = workflowType },
            TaskQueue = new TaskQueue { Name = taskQueue },
            Input = Payloads(input),
            WorkflowTaskTimeout = Duration.FromTimeSpan(TimeSpan.FromSeconds(10)),
            OriginalExecutionRunId = "run-1",
            FirstExecutionRunId = "run-1",
            Attempt = 1,
        });
        NewTask();
        return this;
    }

    private void NewTask()
    {
        var scheduled = Add(EventType.WorkflowTaskScheduled, e => e.WorkflowTaskScheduledEventAttributes = new WorkflowTaskScheduledEventAttributes
        {
            TaskQueue = new TaskQueue { Name = "q" },
            StartToCloseTimeout = Duration.FromTimeSpan(TimeSpan.FromSeconds(10)),
            Attempt = 1,
        });
        Add(EventType.WorkflowTaskStarted, e => e.WorkflowTaskStartedEventAttributes = new WorkflowTaskStartedEventAttributes
        {
            ScheduledEventId = scheduled.EventId,
            Identity = "replay",
            RequestId = Guid.NewGuid().ToString(),
        });
    }

    /// <summary>A command of a completed workflow task.</summary>
    public abstract record Command;

    public sealed record Schedule(string ActivityType, string TaskQueue, object? Input = null) : Command;

    public sealed record Upsert(params (string Key, string Value)[] Attributes) : Command;

    public sealed record CancelActivity(long ScheduledEventId) : Command;

    public sealed record Complete(object? Result) : Command;

    /// <summary>Workflow.Patched(id) run live: sdk-core's "core_patch" marker, then (core flag 2) its
    /// upsert of the TemporalChangeVersion search attribute.</summary>
    public sealed record Patch(string Id) : Command;

    /// <summary>A child workflow started (its initiated event id is returned with the scheduled activities').</summary>
    public sealed record StartChild(string WorkflowType, string WorkflowId, string TaskQueue, object? Input = null) : Command;

    /// <summary>Completes the workflow task in progress with these commands; returns the scheduled event
    /// id of each activity it scheduled, in order.</summary>
    public long[] Task(params Command[] commands)
    {
        if (events[^1].EventType != EventType.WorkflowTaskStarted)
        {
            NewTask();
        }
        var started = events[^1].EventId;
        var completed = Add(EventType.WorkflowTaskCompleted, e =>
        {
            e.WorkflowTaskCompletedEventAttributes = new WorkflowTaskCompletedEventAttributes { ScheduledEventId = started - 1, StartedEventId = started, Identity = "replay" };
            if (!flagged)
            {
                e.WorkflowTaskCompletedEventAttributes.SdkMetadata = new WorkflowTaskCompletedMetadata { CoreUsedFlags = { 1, 2, 3 }, LangUsedFlags = { 1, 2 } };
                flagged = true;
            }
        });
        var scheduled = new List<long>();
        foreach (var command in commands)
        {
            switch (command)
            {
                case Schedule s:
                    scheduled.Add(Add(EventType.ActivityTaskScheduled, e => e.ActivityTaskScheduledEventAttributes = new ActivityTaskScheduledEventAttributes
                    {
                        ActivityId = (++activities).ToString(System.Globalization.CultureInfo.InvariantCulture),
                        ActivityType = new ActivityType { Name = s.ActivityType },
                        TaskQueue = new TaskQueue { Name = s.TaskQueue },
                        Input = Payloads(s.Input),
                        StartToCloseTimeout = Duration.FromTimeSpan(TimeSpan.FromMinutes(1)),
                        WorkflowTaskCompletedEventId = completed.EventId,
                    }).EventId);
                    break;
                case Upsert u:
                    Add(EventType.UpsertWorkflowSearchAttributes, e =>
                    {
                        var attributes = new SearchAttributes();
                        foreach (var (key, value) in u.Attributes)
                        {
                            attributes.IndexedFields[key] = DataConverter.Default.PayloadConverter.ToPayload(value);
                            attributes.IndexedFields[key].Metadata["type"] = Google.Protobuf.ByteString.CopyFromUtf8("Keyword");
                        }
                        e.UpsertWorkflowSearchAttributesEventAttributes = new UpsertWorkflowSearchAttributesEventAttributes
                        {
                            WorkflowTaskCompletedEventId = completed.EventId,
                            SearchAttributes = attributes,
                        };
                    });
                    break;
                case StartChild child:
                    scheduled.Add(Add(EventType.StartChildWorkflowExecutionInitiated, e => e.StartChildWorkflowExecutionInitiatedEventAttributes = new StartChildWorkflowExecutionInitiatedEventAttributes
                    {
                        Namespace = "default",
                        WorkflowId = child.WorkflowId,
                        WorkflowType = new WorkflowType { Name = child.WorkflowType },
                        TaskQueue = new TaskQueue { Name = child.TaskQueue },
                        Input = Payloads(child.Input),
                        WorkflowTaskCompletedEventId = completed.EventId,
                    }).EventId);
                    children[scheduled[^1]] = child;
                    break;
                case CancelActivity c:
                    Add(EventType.ActivityTaskCancelRequested, e => e.ActivityTaskCancelRequestedEventAttributes = new ActivityTaskCancelRequestedEventAttributes
                    {
                        ScheduledEventId = c.ScheduledEventId,
                        WorkflowTaskCompletedEventId = completed.EventId,
                    });
                    break;
                case Patch patch:
                    Add(EventType.MarkerRecorded, e => e.MarkerRecordedEventAttributes = new MarkerRecordedEventAttributes
                    {
                        MarkerName = "core_patch",
                        Details = { ["patch-data"] = Payloads(new { id = patch.Id, deprecated = false }) },
                        WorkflowTaskCompletedEventId = completed.EventId,
                    });
                    Add(EventType.UpsertWorkflowSearchAttributes, e =>
                    {
                        var versions = DataConverter.Default.PayloadConverter.ToPayload(new[] { patch.Id });
                        versions.Metadata["type"] = Google.Protobuf.ByteString.CopyFromUtf8("KeywordList");
                        e.UpsertWorkflowSearchAttributesEventAttributes = new UpsertWorkflowSearchAttributesEventAttributes
                        {
                            WorkflowTaskCompletedEventId = completed.EventId,
                            SearchAttributes = new SearchAttributes { IndexedFields = { ["TemporalChangeVersion"] = versions } },
                        };
                    });
                    break;
                case Complete done:
                    Add(EventType.WorkflowExecutionCompleted, e => e.WorkflowExecutionCompletedEventAttributes = new WorkflowExecutionCompletedEventAttributes
                    {
                        Result = Payloads(done.Result),
                        WorkflowTaskCompletedEventId = completed.EventId,
                    });
                    break;
            }
        }
        return [.. scheduled];
    }

    /// <summary>The activity's first try fails and the server retries it: it records only the try that
    /// ran last, with its attempt number and the earlier failure.</summary>
    public HistoryBuilder Retried(long scheduled)
    {
        attempts[scheduled] = 2;
        return this;
    }

    /// <summary>Activities finish; the next <see cref="Task"/> is the workflow task they wake.</summary>
    public HistoryBuilder Completed(params (long Scheduled, object? Result)[] results)
    {
        foreach (var (scheduled, result) in results)
        {
            var started = StartActivity(scheduled, attempts.GetValueOrDefault(scheduled, 1));
            Add(EventType.ActivityTaskCompleted, e => e.ActivityTaskCompletedEventAttributes = new ActivityTaskCompletedEventAttributes
            {
                ScheduledEventId = scheduled,
                StartedEventId = started,
                Result = Payloads(result),
            });
        }
        return this;
    }

    /// <summary>An activity that failed for good (its retries ran out).</summary>
    /// <summary>The activity failed for good with an application failure of <paramref name="type"/>.</summary>
    public HistoryBuilder Failed(long scheduled, string message, string type = "StepFailed")
    {
        var started = StartActivity(scheduled, 3);
        Add(EventType.ActivityTaskFailed, e => e.ActivityTaskFailedEventAttributes = new ActivityTaskFailedEventAttributes
        {
            ScheduledEventId = scheduled,
            StartedEventId = started,
            Failure = Failure(message, type),
            RetryState = RetryState.MaximumAttemptsReached,
        });
        return this;
    }

    public HistoryBuilder Signaled(string name, object input)
    {
        Add(EventType.WorkflowExecutionSignaled, e => e.WorkflowExecutionSignaledEventAttributes = new WorkflowExecutionSignaledEventAttributes
        {
            SignalName = name,
            Input = Payloads(input),
            Identity = "operator",
        });
        return this;
    }

    private readonly Dictionary<long, StartChild> children = [];

    /// <summary>Child workflows that started and ended with <paramref name="results"/> (by initiated event id).</summary>
    public HistoryBuilder ChildrenCompleted(params (long Initiated, object? Result)[] results)
    {
        var started = new Dictionary<long, long>();
        foreach (var (initiated, _) in results)
        {
            var child = children[initiated];
            started[initiated] = Add(EventType.ChildWorkflowExecutionStarted, e => e.ChildWorkflowExecutionStartedEventAttributes = new ChildWorkflowExecutionStartedEventAttributes
            {
                Namespace = "default",
                InitiatedEventId = initiated,
                WorkflowExecution = new WorkflowExecution { WorkflowId = child.WorkflowId, RunId = $"run-{initiated}" },
                WorkflowType = new WorkflowType { Name = child.WorkflowType },
            }).EventId;
        }
        foreach (var (initiated, result) in results)
        {
            var child = children[initiated];
            Add(EventType.ChildWorkflowExecutionCompleted, e => e.ChildWorkflowExecutionCompletedEventAttributes = new ChildWorkflowExecutionCompletedEventAttributes
            {
                Namespace = "default",
                InitiatedEventId = initiated,
                StartedEventId = started[initiated],
                WorkflowExecution = new WorkflowExecution { WorkflowId = child.WorkflowId, RunId = $"run-{initiated}" },
                WorkflowType = new WorkflowType { Name = child.WorkflowType },
                Result = Payloads(result),
            });
        }
        return this;
    }

    /// <summary>A cancel of the workflow, as the Web UI or `temporal workflow cancel` asks for it.</summary>
    public HistoryBuilder CancelRequested(string cause)
    {
        Add(EventType.WorkflowExecutionCancelRequested, e => e.WorkflowExecutionCancelRequestedEventAttributes = new WorkflowExecutionCancelRequestedEventAttributes
        {
            Cause = cause,
            Identity = "operator",
        });
        return this;
    }

    /// <summary>Activities that acknowledged a cancel request.</summary>
    public HistoryBuilder Canceled(params long[] scheduled)
    {
        foreach (var s in scheduled)
        {
            var started = startedOf.TryGetValue(s, out var st) ? st : StartActivity(s, 1);
            Add(EventType.ActivityTaskCanceled, e => e.ActivityTaskCanceledEventAttributes = new ActivityTaskCanceledEventAttributes
            {
                ScheduledEventId = s,
                StartedEventId = started,
                LatestCancelRequestedEventId = events.Last(x => x.EventType == EventType.ActivityTaskCancelRequested && x.ActivityTaskCancelRequestedEventAttributes.ScheduledEventId == s).EventId,
            });
        }
        return this;
    }

    private long StartActivity(long scheduled, int attempt)
    {
        var started = Add(EventType.ActivityTaskStarted, e => e.ActivityTaskStartedEventAttributes = new ActivityTaskStartedEventAttributes
        {
            ScheduledEventId = scheduled,
            Identity = "replay",
            RequestId = Guid.NewGuid().ToString(),
            Attempt = attempt,
            LastFailure = attempt > 1 ? Failure("an earlier attempt failed") : null,
        }).EventId;
        startedOf[scheduled] = started;
        return started;
    }

    private static Failure Failure(string message, string type = "StepFailed") => new()
    {
        Message = message,
        ApplicationFailureInfo = new ApplicationFailureInfo { Type = type },
    };

    public WorkflowHistory Build(string workflowId = "migration-1") => new(workflowId, events);

    /// <summary>The same history with one activity type renamed: a workflow that no longer matches it.</summary>
    public WorkflowHistory BuildWithActivityTypeChanged(string from, string to)
    {
        var copy = events.Select(e => e.Clone()).ToList();
        var target = copy.First(e => e.EventType == EventType.ActivityTaskScheduled && e.ActivityTaskScheduledEventAttributes.ActivityType.Name == from);
        target.ActivityTaskScheduledEventAttributes.ActivityType.Name = to;
        return new WorkflowHistory("migration-changed", copy);
    }

}
