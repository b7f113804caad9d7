using Cronos;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Migration;

namespace SEmigrate.Workers.Embedded;

/// <summary>A drain the embedded engine runs on a schedule, kept in Marten so that every orchestrator
/// (and one restarted) sees it: a cron expression (UTC, 5 fields) or a fixed interval; <see cref="Overlap"/>
/// says what a run that comes while the last one still runs does (skip it, or run it too).
/// <see cref="LastProblem"/>: why the last run failed, if it did; <see cref="LastSkip"/>: the last run skipped, and why.</summary>
public sealed record DrainSchedule(string Id, string Host, string? Cron, TimeSpan? Every, ScheduleOverlap Overlap, MigrationMode Mode, IReadOnlyList<string> PlainProcesses,
    int MaxConcurrent, bool Paused, DateTimeOffset NextRun, DateTimeOffset? LastRun = null, DrainReport? LastReport = null, string? LastProblem = null,
    string? LastSkip = null, DrainOrder? Order = null)
{
    /// <summary>The first run after <paramref name="after"/>.</summary>
    public DateTimeOffset NextAfter(DateTimeOffset after) => Cron is { } cron
        ? CronExpression.Parse(cron).GetNextOccurrence(after, TimeZoneInfo.Utc) ?? DateTimeOffset.MaxValue
        : after + (Every ?? throw new InvalidOperationException($"schedule {Id} has neither a cron expression nor an interval"));

    /// <summary>Checks a cron expression; returns why it is not one, or null.</summary>
    public static string? CronProblem(string cron)
    {
        try
        {
            CronExpression.Parse(cron);
            return null;
        }
        catch (CronFormatException e)
        {
            return $"--cron '{cron}': {e.Message} (5 fields: minute hour day month weekday, UTC)";
        }
    }
}

public enum ScheduleOverlap
{
    /// <summary>A run that comes while the last one still runs is skipped.</summary>
    Skip,

    /// <summary>It runs too.</summary>
    AllowAll,
}
