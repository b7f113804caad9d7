using System.Collections.Concurrent;
using MassTransit;
using SEmigrate.Contracts.Migration;

namespace SEmigrate.Workers.Embedded;

/// <summary>The last heartbeat of every transfer this process watches, as the source publishes them:
/// the embedded engine resumes a retried transfer from it and declares an attempt dead when it goes
/// quiet; `semigrate migrate` draws its progress bars from it.</summary>
public sealed class TransferWatch
{
    private readonly ConcurrentDictionary<(Guid, string), (TransferProgress Progress, DateTime At)> last = new();

    public void Beat(TransferProgress p) => last.AddOrUpdate((p.MigrationId, p.Host), (p, DateTime.UtcNow),
        (_, old) => (p.Round > old.Progress.Round || (p.Round == old.Progress.Round && p.NextPfn >= old.Progress.NextPfn) ? p : old.Progress, DateTime.UtcNow));

    public (TransferProgress Progress, DateTime At)? Last(Guid migrationId, string host) =>
        last.TryGetValue((migrationId, host), out var l) ? l : null;

    public IReadOnlyList<TransferProgress> Of(Guid migrationId) =>
        [.. last.Where(kv => kv.Key.Item1 == migrationId).Select(kv => kv.Value.Progress).OrderBy(p => p.Host, StringComparer.Ordinal)];
}

public sealed class TransferProgressConsumer(TransferWatch watch) : IConsumer<TransferProgress>
{
    public Task Consume(ConsumeContext<TransferProgress> context)
    {
        watch.Beat(context.Message);
        return Task.CompletedTask;
    }
}
