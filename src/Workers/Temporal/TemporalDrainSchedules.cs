using SEmigrate.Contracts.Migration;
using SEmigrate.Workers.Embedded;
using SEmigrate.Workflows;
using Temporalio.Api.Enums.V1;
using Temporalio.Client;
using Temporalio.Client.Schedules;

namespace SEmigrate.Workers.Temporal;

/// <summary>Drain schedules as Temporal schedules (with Temporal configured): each starts the DrainHost
/// workflow (id drain-HOST-…, a new drain id each run) by cron or interval, with the overlap policy
/// asked for; pause, unpause, trigger, delete and list are Temporal's own.</summary>
public static class TemporalDrainSchedules
{
    public static async Task CreateAsync(ITemporalClient client, DrainSchedule schedule)
    {
        // An empty drain id: each run makes its own (DrainWorkflow), so its guests' ids are new each time.
        var drain = new DrainHost(Guid.Empty, schedule.Host, schedule.Mode, schedule.PlainProcesses, schedule.MaxConcurrent, schedule.Order);
        var action = ScheduleActionStartWorkflow.Create((DrainWorkflow w) => w.RunAsync(drain), new WorkflowOptions($"drain-{schedule.Host}", MigrationWorkflow.OrchestratorQueue)
        {
            StaticSummary = $"drain {schedule.Host} (schedule {schedule.Id})",
        });
        var spec = schedule.Cron is { } cron ? new ScheduleSpec { CronExpressions = [cron] } : new ScheduleSpec { Intervals = [new ScheduleIntervalSpec(schedule.Every!.Value)] };
        await client.CreateScheduleAsync(schedule.Id, new Schedule(action, spec)
        {
            Policy = new SchedulePolicy { Overlap = schedule.Overlap == ScheduleOverlap.Skip ? ScheduleOverlapPolicy.Skip : ScheduleOverlapPolicy.AllowAll },
        });
    }

    public static async Task<IReadOnlyList<string>> ListAsync(ITemporalClient client, CancellationToken ct)
    {
        var lines = new List<string>();
        await foreach (var s in client.ListSchedulesAsync(new ScheduleListOptions { Rpc = new RpcOptions { CancellationToken = ct } }))
        {
            var next = s.Info?.NextActionTimes.FirstOrDefault();
            lines.Add($"{s.Id,-24} {(s.Schedule?.State.Paused == true ? "PAUSED" : next is { } n ? $"next {n:u}" : "")}  {s.Schedule?.State.Note}");
        }
        return lines;
    }
}
