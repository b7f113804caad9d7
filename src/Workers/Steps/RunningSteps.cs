using System.Collections.Concurrent;

namespace SEmigrate.Workers.Steps;

/// <summary>The steps this worker runs for the embedded engine that a cancel may stop (a migration's
/// forward steps, never its releases), by migration. A cancel that comes before its step does (both
/// travel through the broker) stops that step as it starts: cancelled migrations are remembered for an
/// hour.</summary>
public sealed class RunningSteps
{
    private static readonly TimeSpan Remembered = TimeSpan.FromHours(1);
    private readonly ConcurrentDictionary<Guid, ConcurrentDictionary<CancellationTokenSource, byte>> running = new();
    private readonly ConcurrentDictionary<Guid, DateTime> cancelled = new();

    /// <summary>A step of <paramref name="migrationId"/> starts: its token, cancelled by <see cref="Cancel"/>
    /// or by <paramref name="outer"/>; the step ends when the scope is disposed.</summary>
    public Scope Start(Guid migrationId, CancellationToken outer)
    {
        var cts = CancellationTokenSource.CreateLinkedTokenSource(outer);
        running.GetOrAdd(migrationId, _ => new()).TryAdd(cts, 0);
        if (cancelled.ContainsKey(migrationId))
        {
            cts.Cancel();
        }
        return new Scope(this, migrationId, cts);
    }

    /// <summary>Cancels every step of the migration running here, and any that starts later; returns how many ran.</summary>
    public int Cancel(Guid migrationId)
    {
        var now = DateTime.UtcNow;
        cancelled[migrationId] = now;
        foreach (var (id, at) in cancelled)
        {
            if (now - at > Remembered)
            {
                cancelled.TryRemove(id, out _);
            }
        }
        var steps = running.TryGetValue(migrationId, out var of) ? of.Keys.ToList() : [];
        foreach (var cts in steps)
        {
            cts.Cancel();
        }
        return steps.Count;
    }

    public sealed class Scope(RunningSteps steps, Guid migrationId, CancellationTokenSource cts) : IDisposable
    {
        public CancellationToken Token => cts.Token;

        public void Dispose()
        {
            if (steps.running.TryGetValue(migrationId, out var of))
            {
                of.TryRemove(cts, out _);
            }
            cts.Dispose();
        }
    }
}
