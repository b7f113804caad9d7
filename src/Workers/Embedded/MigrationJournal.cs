using System.Text.Json;
using Marten;
using SEmigrate.Contracts.Audit;
using SEmigrate.Contracts.Migration;
using SEmigrate.Workers.Audit;
using SEmigrate.Workflows;

namespace SEmigrate.Workers.Embedded;

/// <summary>One migration's Marten stream as the embedded engine writes and replays it: a step recorded
/// as done answers from here and is not sent again, one recorded as failed fails again, a lifecycle
/// event already recorded is not recorded twice. Every result is appended before the procedure sees
/// it, so a restarted orchestrator picks up exactly where the last one's record ends.</summary>
public sealed class MigrationJournal
{
    private static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web);

    private readonly (IDocumentStore Store, AuditSeal Seal)? to;
    private readonly Guid id;
    private readonly SemaphoreSlim appending = new(1, 1);
    private readonly Dictionary<string, string> completed = new(StringComparer.Ordinal);
    private readonly Dictionary<string, (string Reason, string? Kind)> failed = new(StringComparer.Ordinal);
    private readonly Dictionary<string, string> scheduled = new(StringComparer.Ordinal); // step -> its host
    private readonly Dictionary<string, int> recorded = new(StringComparer.Ordinal);
    private readonly Dictionary<string, int> recording = new(StringComparer.Ordinal);
    private bool ended;

    private MigrationJournal((IDocumentStore, AuditSeal)? to, Guid id, IReadOnlyList<object> events)
    {
        (this.to, this.id) = (to, id);
        foreach (var e in events)
        {
            switch (e)
            {
                case MigrationAccepted a:
                    Request = a.Request;
                    break;
                case StepScheduled s:
                    scheduled[s.Step] = s.Host;
                    break;
                case StepCompleted c:
                    completed[c.Step] = c.Result;
                    break;
                case StepFailed f:
                    failed[f.Step] = (f.Reason, f.Kind);
                    break;
                case CancelRequested c:
                    CancelReason = c.Reason;
                    break;
                case ProcedureEnded:
                    ended = true;
                    break;
                case IMigrationEvent m:
                    recorded[KeyOf(m)] = recorded.GetValueOrDefault(KeyOf(m)) + 1;
                    break;
            }
        }
        Steps = completed.Count + failed.Count;
    }

    /// <summary>The request the migration was accepted with (null before that).</summary>
    public MigrationRequest? Request { get; private set; }

    /// <summary>Why the operator cancelled it, if they did.</summary>
    public string? CancelReason { get; private set; }

    /// <summary>Steps that had ended when this journal was loaded (what a resume replays).</summary>
    public int Steps { get; }

    public static async Task<MigrationJournal> LoadAsync(IDocumentStore store, AuditSeal seal, Guid id, CancellationToken ct)
    {
        await using var query = store.QuerySession();
        var events = await query.Events.FetchStreamAsync(id, token: ct);
        // What the journal replays decides what happens next: a stream rewritten in the database is not followed.
        if (AuditChain.Verify(events, seal) is { } broken)
        {
            throw new InvalidOperationException($"migration {id}: its stream does not hold at event {broken.Version} ({broken.Type}): {broken.Problem}; `semigrate audit {id}`");
        }
        return new MigrationJournal((store, seal), id, [.. events.Select(e => e.Data)]);
    }

    /// <summary>A journal to read only (an audit's replay): appending to it fails.</summary>
    public static MigrationJournal Of(Guid id, IReadOnlyList<object> events) => new(null, id, events);

    /// <summary>The step's recorded outcome: its result, or (throws) its failure; false if it has none.</summary>
    public bool TryReplay<TOut>(string step, out TOut result)
    {
        lock (completed)
        {
            if (failed.TryGetValue(step, out var failure))
            {
                throw new StepFailedException(failure.Reason, failure.Kind, scheduled.GetValueOrDefault(step));
            }
            if (completed.TryGetValue(step, out var json))
            {
                result = JsonSerializer.Deserialize<TOut>(json, Json) ?? throw new InvalidOperationException($"step {step}: its recorded result is empty");
                return true;
            }
        }
        result = default!;
        return false;
    }

    public Task AcceptedAsync(MigrationRequest request)
    {
        Request = request;
        return AppendAsync(new MigrationAccepted(id, request, DateTimeOffset.UtcNow));
    }

    /// <summary>Records that the procedure returned, once (a replay of an ended migration ends it again).</summary>
    public Task EndedAsync(MigrationState state)
    {
        if (ended)
        {
            return Task.CompletedTask;
        }
        ended = true;
        return AppendAsync(new ProcedureEnded(id, state, DateTimeOffset.UtcNow));
    }

    public Task CancelledAsync(string reason)
    {
        CancelReason = reason;
        return AppendAsync(new CancelRequested(id, reason, DateTimeOffset.UtcNow));
    }

    /// <summary>Records that the step is sent, once (a step asked again after a restart is not recorded again).</summary>
    public Task ScheduledAsync(string step, string host)
    {
        lock (completed)
        {
            if (!scheduled.TryAdd(step, host))
            {
                return Task.CompletedTask;
            }
        }
        return AppendAsync(new StepScheduled(id, step, host, DateTimeOffset.UtcNow));
    }

    public async Task CompletedAsync<TOut>(string step, TOut result)
    {
        var json = JsonSerializer.Serialize(result, Json);
        await AppendAsync(new StepCompleted(id, step, json, DateTimeOffset.UtcNow));
        lock (completed)
        {
            completed[step] = json;
        }
    }

    public async Task FailedAsync(string step, StepFailedException e)
    {
        await AppendAsync(new StepFailed(id, step, e.Message, DateTimeOffset.UtcNow, e.Kind));
        lock (completed)
        {
            failed[step] = (e.Message, e.Kind);
        }
    }

    /// <summary>Records a lifecycle event, unless a replay reaches one that was recorded before.</summary>
    public Task RecordAsync(IMigrationEvent e)
    {
        lock (completed)
        {
            var key = KeyOf(e);
            var nth = recording[key] = recording.GetValueOrDefault(key) + 1;
            if (nth <= recorded.GetValueOrDefault(key))
            {
                return Task.CompletedTask;
            }
        }
        return AppendAsync(e);
    }

    /// <summary>Events of one type for one host are the same event when a replay meets them in the same order.</summary>
    public static string KeyOf(IMigrationEvent e) => e switch
    {
        DestinationTransferred d => $"{nameof(DestinationTransferred)}:{d.Host}",
        DestinationLost d => $"{nameof(DestinationLost)}:{d.Host}",
        _ => e.GetType().Name,
    };

    /// <summary>One append at a time per migration; another writer of the stream (the auditor's host
    /// events) only makes it try again.</summary>
    private async Task AppendAsync(IMigrationEvent e)
    {
        var (store, seal) = to ?? throw new InvalidOperationException($"migration {id}: this journal is only read (an audit)");
        await appending.WaitAsync();
        try
        {
            for (var attempt = 1; ; attempt++)
            {
                try
                {
                    await using var session = store.LightweightSession();
                    var head = await AuditChain.AppendAsync(session, seal, id, e, null, CancellationToken.None);
                    await session.SaveChangesAsync();
                    seal.RecordHead(id, head.Version, head.Hash);
                    return;
                }
                catch (Exception x) when (attempt < 10 && x is JasperFx.ConcurrencyException or JasperFx.Events.EventStreamUnexpectedMaxEventIdException)
                {
                    await Task.Delay(20 * attempt);
                }
            }
        }
        finally
        {
            appending.Release();
        }
    }
}
