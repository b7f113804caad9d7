namespace SEmigrate.Workflows;

/// <summary>How a step is retried and timed: both engines use the same numbers. Heartbeat is set for
/// long steps that report progress (a transfer) or beat to learn of a cancel (the switch-over): no
/// heartbeat for that long means the attempt is dead. StartWithin: how long a step may wait for its
/// host's worker to take it before the host counts as unreachable (Temporal's schedule-to-start; the
/// embedded engine asks the broker instead, see HostWorkers).</summary>
public sealed record StepPolicy(int MaxAttempts, TimeSpan Timeout, TimeSpan Backoff, TimeSpan? Heartbeat = null, TimeSpan? StartWithin = null);

/// <summary>Per-step policies. Starting paging servers and releasing are quick and fail fast (a host
/// that does not answer is unreachable); a transfer may run long but must heartbeat.</summary>
public sealed record StepPolicies(StepPolicy Introspect, StepPolicy Quick, StepPolicy Transfer, StepPolicy SwitchOver)
{
    /// <summary>A worker restarting (an upgrade) takes seconds; one not back within a minute is not coming.</summary>
    private static readonly TimeSpan StartWithin = TimeSpan.FromMinutes(1);

    public static readonly StepPolicies Default = new(
        Introspect: new StepPolicy(3, TimeSpan.FromMinutes(10), TimeSpan.FromSeconds(1), StartWithin: StartWithin),
        Quick: new StepPolicy(3, TimeSpan.FromSeconds(20), TimeSpan.FromSeconds(1), StartWithin: StartWithin),
        Transfer: new StepPolicy(10, TimeSpan.FromHours(6), TimeSpan.FromSeconds(1), Heartbeat: TimeSpan.FromSeconds(15), StartWithin: StartWithin),
        SwitchOver: new StepPolicy(3, TimeSpan.FromMinutes(30), TimeSpan.FromSeconds(1), Heartbeat: TimeSpan.FromSeconds(30), StartWithin: StartWithin));
}
