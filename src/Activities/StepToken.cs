using Temporalio.Activities;

namespace SEmigrate.Activities;

/// <summary>The running step's cancellation: Temporal's when it runs as an activity (delivered on a
/// heartbeat), the embedded engine's when its worker runs it (see <see cref="Use"/>).</summary>
public static class StepToken
{
    private static readonly AsyncLocal<CancellationToken?> Embedded = new();

    public static CancellationToken Current =>
        ActivityExecutionContext.HasCurrent ? ActivityExecutionContext.Current.CancellationToken : Embedded.Value ?? CancellationToken.None;

    /// <summary>The token of the step the embedded engine's worker runs from here on (this async flow).</summary>
    public static void Use(CancellationToken ct) => Embedded.Value = ct;

    /// <summary>Heartbeats the running activity every <paramref name="every"/> until disposed, so that a
    /// step that reports no progress still learns of a cancel (Temporal delivers it on a heartbeat) and
    /// its death is noticed; nothing outside Temporal.</summary>
    public static IDisposable Heartbeats(TimeSpan every)
    {
        if (!ActivityExecutionContext.HasCurrent)
        {
            return new CancellationTokenSource(); // nothing to beat: disposing it is a no-op
        }
        var activity = ActivityExecutionContext.Current;
        return new Timer(_ => activity.Heartbeat(), null, TimeSpan.Zero, every);
    }
}
