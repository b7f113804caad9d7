using System.Text.Json;
using System.Text.Json.Nodes;
using SEmigrate.Contracts.Audit;
using SEmigrate.Contracts.Migration;
using SEmigrate.Workers.Embedded;
using SEmigrate.Workflows;

namespace SEmigrate.Workers.Audit;

/// <summary>Today's procedure replayed against a migration's stream, as `semigrate audit` runs it: every
/// step answers with its recorded result and nothing is sent; a step the migration never ran, or a
/// lifecycle event other than the one recorded, is a finding (the procedure no longer does what it did).</summary>
public sealed class ReplaySteps(Guid migrationId, IReadOnlyList<object> events) : IMigrationSteps
{
    private static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web);

    private readonly MigrationJournal journal = MigrationJournal.Of(migrationId, events);
    private readonly Dictionary<string, Queue<IMigrationEvent>> recorded = events.OfType<IMigrationEvent>().Where(e => e is not IJournalEvent)
        .GroupBy(MigrationJournal.KeyOf).ToDictionary(g => g.Key, g => new Queue<IMigrationEvent>(g), StringComparer.Ordinal);
    private readonly HashSet<string> replayedKeys = new(StringComparer.Ordinal);

    /// <summary>Where the replay and the record part, in the order met.</summary>
    public List<string> Findings { get; } = [];

    /// <summary>What the migration recorded of the procedure's own events and the replay did not record.</summary>
    public IEnumerable<string> Unreplayed =>
        recorded.Where(kv => replayedKeys.Contains(kv.Key)).SelectMany(kv => kv.Value).Select(e => $"{e.GetType().Name} was recorded, but the procedure does not record it now");

    public DateTimeOffset UtcNow => DateTimeOffset.UnixEpoch;

    public async Task<T[]> WhenAllAsync<T>(IEnumerable<Task<T>> steps) => await Task.WhenAll(steps);

    public bool Patched(string patchId) => true;

    public Task<GuestLayout> MeasureAsync(string host, MeasureGuest input, CancellationToken ct) => Step<GuestLayout>(StepKeys.Measure, ct);

    public Task<IntrospectionResult> IntrospectAsync(string host, IntrospectGuest input, CancellationToken ct) => Step<IntrospectionResult>(StepKeys.Introspect, ct);

    public Task<PagingStarted> StartPagingAsync(string host, StartPaging input, CancellationToken ct) => Step<PagingStarted>(StepKeys.StartPaging(host, input.Round), ct);

    public Task<TransferResult> TransferAsync(string host, TransferPages input, CancellationToken ct) => Step<TransferResult>(StepKeys.Transfer(input.Assignment, input.Round), ct);

    public Task<HandedOver> HandOverAsync(string host, HandOver input, CancellationToken ct) => Step<HandedOver>(StepKeys.HandOver, ct);

    public Task<SwitchedOverResult> SwitchOverAsync(string host, SwitchOver input, CancellationToken ct) => Step<SwitchedOverResult>(StepKeys.SwitchOver, ct);

    public Task<PagingReleased> ReleasePagingAsync(string host, ReleasePaging input, CancellationToken ct) => Step<PagingReleased>(StepKeys.ReleasePaging(host), ct);

    public Task<SourceReleased> ReleaseSourceAsync(string host, ReleaseSource input, CancellationToken ct) => Step<SourceReleased>(StepKeys.ReleaseSource(input.VmLeft), ct);

    public Task RecordAsync(IMigrationEvent e)
    {
        var key = MigrationJournal.KeyOf(e);
        lock (Findings)
        {
            replayedKeys.Add(key);
            if (!recorded.TryGetValue(key, out var queue) || !queue.TryDequeue(out var then))
            {
                Findings.Add($"the procedure records {e.GetType().Name}, which the migration did not");
            }
            else if (!JsonNode.DeepEquals(Content(e), Content(then)))
            {
                Findings.Add($"the procedure records {Content(e)}, where the migration recorded {Content(then)}");
            }
        }
        return Task.CompletedTask;
    }

    private Task<T> Step<T>(string key, CancellationToken ct)
    {
        try
        {
            if (journal.TryReplay<T>(key, out var result))
            {
                return Task.FromResult(result);
            }
        }
        catch (StepFailedException e)
        {
            return Task.FromException<T>(e);
        }
        // Steps cut by a cancel were never recorded: so it went then.
        ct.ThrowIfCancellationRequested();
        lock (Findings)
        {
            Findings.Add($"the procedure asks for step '{key}', which the migration never ran");
        }
        return Task.FromException<T>(new StepFailedException($"step '{key}' is not in the stream"));
    }

    /// <summary>An event's content without its time (the replay's clock is not the migration's).</summary>
    private static JsonNode Content(IMigrationEvent e)
    {
        var node = JsonSerializer.SerializeToNode(e, e.GetType(), Json)!.AsObject();
        node.Remove("at");
        node.Add("$event", e.GetType().Name);
        return node;
    }
}
