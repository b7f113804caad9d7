using System.Collections.Concurrent;
using Marten;
using MassTransit;
using Microsoft.Extensions.Logging;
using SEmigrate.Contracts.Audit;
using SEmigrate.Contracts.Migration;
using SEmigrate.Workers.Audit;
using SEmigrate.Workflows;

namespace SEmigrate.Workers.Embedded;

/// <summary>The embedded engine: the migration procedure's steps as MassTransit requests to the worker
/// of the host each must run on, with the same retry policy, timeouts and heartbeat timeout Temporal
/// would apply. A retried transfer resumes from its last heartbeat. Durable: every step's scheduling
/// and result, and every lifecycle event, is appended to the migration's stream (<see cref="MigrationJournal"/>)
/// before the procedure sees it; a step the journal holds answers from there, so a procedure run again
/// after a crash replays up to where the record ends and goes on live from there.</summary>
public sealed class EmbeddedSteps(IClientFactory clients, IBus bus, IDocumentStore store, AuditSeal seal, TransferWatch watch, HostWorkers workers, StepPolicies policies,
    ILogger<EmbeddedSteps> logger)
    : IMigrationSteps
{
    /// <summary>How long a cancelled step may take to stop before the procedure goes on without it (a
    /// transfer stops at its next batch, a switch-over at its next stage).</summary>
    public static readonly TimeSpan StopWait = TimeSpan.FromSeconds(30);

    private readonly ConcurrentDictionary<Guid, Lazy<Task<MigrationJournal>>> journals = new();

    /// <summary>The migration's journal, loaded from its stream once per process (while it runs here).</summary>
    public Task<MigrationJournal> JournalAsync(Guid migrationId) =>
        journals.GetOrAdd(migrationId, id => new Lazy<Task<MigrationJournal>>(() => MigrationJournal.LoadAsync(store, seal, id, CancellationToken.None))).Value;

    /// <summary>The migration no longer runs here: its journal is read again from its stream next time.</summary>
    public void Forget(Guid migrationId) => journals.TryRemove(migrationId, out _);

    public DateTimeOffset UtcNow => DateTimeOffset.UtcNow;

    public async Task<T[]> WhenAllAsync<T>(IEnumerable<Task<T>> steps) => await Task.WhenAll(steps);

    /// <summary>Always the newest path: the journal records no patch markers (its steps answer by name, so a
    /// migration resumed across an upgrade goes on along the new path).</summary>
    public bool Patched(string patchId) => true;

    public Task<GuestLayout> MeasureAsync(string host, MeasureGuest input, CancellationToken ct) =>
        JournaledAsync<MeasureGuest, GuestLayout>(input.MigrationId, StepKeys.Measure, host, "measure guest", _ => input, policies.Quick, ct);

    public Task<IntrospectionResult> IntrospectAsync(string host, IntrospectGuest input, CancellationToken ct) =>
        JournaledAsync<IntrospectGuest, IntrospectionResult>(input.MigrationId, StepKeys.Introspect, host, "introspect", _ => input, policies.Introspect, ct);

    public Task<PagingStarted> StartPagingAsync(string host, StartPaging input, CancellationToken ct) =>
        JournaledAsync<StartPaging, PagingStarted>(input.MigrationId, StepKeys.StartPaging(host, input.Round), host, "start paging", _ => input, policies.Quick, ct);

    public Task<TransferResult> TransferAsync(string host, TransferPages input, CancellationToken ct) =>
        JournaledAsync<TransferPages, TransferResult>(input.MigrationId, StepKeys.Transfer(input.Assignment, input.Round), host, $"transfer to {input.Assignment.Host}",
            attempt => input with { Attempt = attempt, ResumeFrom = Math.Max(input.ResumeFrom, Beat(input)?.Progress.NextPfn ?? 0) },
            policies.Transfer, ct, () => Beat(input)?.At);

    /// <summary>The transfer's last heartbeat in its round (an earlier round's went to a host that lost it).</summary>
    private (TransferProgress Progress, DateTime At)? Beat(TransferPages input) =>
        watch.Last(input.MigrationId, input.Assignment.Host) is { } last && last.Progress.Round == input.Round ? last : null;

    public Task<HandedOver> HandOverAsync(string host, HandOver input, CancellationToken ct) =>
        JournaledAsync<HandOver, HandedOver>(input.MigrationId, StepKeys.HandOver, host, "hand over", _ => input, policies.Quick, ct);

    public Task<SwitchedOverResult> SwitchOverAsync(string host, SwitchOver input, CancellationToken ct) =>
        JournaledAsync<SwitchOver, SwitchedOverResult>(input.MigrationId, StepKeys.SwitchOver, host, "switch over", _ => input, policies.SwitchOver, ct);

    public Task<PagingReleased> ReleasePagingAsync(string host, ReleasePaging input, CancellationToken ct) =>
        JournaledAsync<ReleasePaging, PagingReleased>(input.MigrationId, StepKeys.ReleasePaging(host), host, "release", _ => input, policies.Quick, ct);

    public Task<SourceReleased> ReleaseSourceAsync(string host, ReleaseSource input, CancellationToken ct) =>
        JournaledAsync<ReleaseSource, SourceReleased>(input.MigrationId, StepKeys.ReleaseSource(input.VmLeft), host, "release source", _ => input,
            policies.Quick, ct);

    public async Task RecordAsync(IMigrationEvent e) => await (await JournalAsync(e.MigrationId)).RecordAsync(e);

    /// <summary>Not a step of the procedure: `semigrate vm stop`.</summary>
    public Task<VmStopped> StopVmAsync(StopVm input, CancellationToken ct) =>
        RunAsync<StopVm, VmStopped>(input.MigrationId, input.Main, "stop VM", _ => input, policies.SwitchOver, ct);

    /// <summary>Not a step of the procedure: the memory check of the demo and the tests (see MemoryCheck).</summary>
    public Task<MemoryDigest> DigestAsync(DigestMemory input, CancellationToken ct) =>
        RunAsync<DigestMemory, MemoryDigest>(input.MigrationId, input.Host, "digest memory", _ => input, policies.SwitchOver, ct);

    /// <summary>A step of the procedure: answered from the journal if it ended before, else sent, with its
    /// scheduling and its outcome appended to the migration's stream. A step that was sent but not
    /// answered before a crash is sent again (every step is idempotent).</summary>
    private async Task<TOut> JournaledAsync<TIn, TOut>(Guid migrationId, string key, string host, string step, Func<int, TIn> forAttempt, StepPolicy policy,
        CancellationToken ct, Func<DateTime?>? lastHeartbeat = null)
        where TIn : class
        where TOut : class
    {
        var journal = await JournalAsync(migrationId);
        if (journal.TryReplay<TOut>(key, out var recorded))
        {
            return recorded;
        }
        await journal.ScheduledAsync(key, host);
        TOut result;
        try
        {
            result = await RunAsync<TIn, TOut>(migrationId, host, step, forAttempt, policy, ct, lastHeartbeat);
        }
        catch (StepFailedException e)
        {
            await journal.FailedAsync(key, e);
            throw;
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            // Sent, then stopped by the cancel: recorded too, so that a replay meets it where it was.
            await journal.FailedAsync(key, new StepFailedException($"{step} at {host} stopped: the migration was cancelled", StepErrors.Cancelled));
            throw;
        }
        await journal.CompletedAsync(key, result);
        return result;
    }

    /// <summary>Sends the step until it answers, as the policy allows. A cancel (<paramref name="ct"/>) while
    /// the step runs asks its worker to stop it (CancelSteps) and waits for its answer, up to
    /// <see cref="StopWait"/>: a step that finished anyway (a switch-over past its point of no return)
    /// returns its result, one that stopped ends in OperationCanceledException, as does a cancel before.</summary>
    private async Task<TOut> RunAsync<TIn, TOut>(Guid migrationId, string host, string step, Func<int, TIn> forAttempt, StepPolicy policy, CancellationToken ct,
        Func<DateTime?>? lastHeartbeat = null)
        where TIn : class
        where TOut : class
    {
        var client = clients.CreateRequestClient<TIn>(new Uri($"queue:{StepQueues.Host(host)}"), RequestTimeout.After(ms: (int)policy.Timeout.TotalMilliseconds));
        string? last = null;
        var unreachable = false; // the last attempt found no worker answering, rather than a failing step
        for (var attempt = 1; attempt <= policy.MaxAttempts; attempt++)
        {
            ct.ThrowIfCancellationRequested();
            if (!await workers.AwaitAsync(host, ct))
            {
                // Sending would only wait out the step's timeout: say so now, and do not retry.
                throw new StepFailedException($"{step}: no worker for host {host} is running (nothing consumes {StepQueues.Host(host)})", StepErrors.Unreachable, host);
            }
            using var attemptCts = new CancellationTokenSource(); // not the migration's: a cancelled step is waited for
            var started = DateTime.UtcNow;
            DateTime? stopBy = null;
            try
            {
                var request = client.GetResponse<TOut, StepRefused>(forAttempt(attempt), attemptCts.Token, RequestTimeout.After(ms: (int)policy.Timeout.TotalMilliseconds));
                var lastSeen = DateTime.UtcNow;
                while (await Task.WhenAny(request, Task.Delay(TimeSpan.FromMilliseconds(ct.IsCancellationRequested ? 100 : 500), CancellationToken.None)) != request)
                {
                    if (ct.IsCancellationRequested && stopBy is null)
                    {
                        stopBy = DateTime.UtcNow + StopWait;
                        // The engine knows only that its procedure stops the step, not why (the log of the migration says).
                        await bus.Publish(new CancelSteps(migrationId, "the migration stops its steps: cancelled, or another step failed"), CancellationToken.None);
                        logger.LogWarning("{Step} at {Host}: cancelled, waiting for the step to stop", step, host);
                    }
                    if (stopBy is { } by && DateTime.UtcNow > by)
                    {
                        await attemptCts.CancelAsync();
                        logger.LogError("{Step} at {Host}: did not stop within {Seconds:0} s of the cancel; going on without it", step, host, StopWait.TotalSeconds);
                        throw new OperationCanceledException(ct);
                    }
                    // No heartbeat for that long, counted from this attempt's start: the attempt is dead.
                    if (policy.Heartbeat is { } beat && lastHeartbeat is not null)
                    {
                        var seen = lastHeartbeat() is { } at && at > started ? at : started;
                        if (DateTime.UtcNow - seen > beat)
                        {
                            await attemptCts.CancelAsync();
                            throw new TimeoutException($"no heartbeat from {host} for {beat.TotalSeconds:0} s");
                        }
                    }
                    // A worker that went away does not answer: waiting out a long step's timeout tells nobody anything.
                    if (DateTime.UtcNow - lastSeen < TimeSpan.FromSeconds(2))
                    {
                        continue;
                    }
                    if (await workers.IsRunningAsync(host, CancellationToken.None))
                    {
                        lastSeen = DateTime.UtcNow;
                    }
                    else if (DateTime.UtcNow - lastSeen > HostWorkers.Grace)
                    {
                        await attemptCts.CancelAsync();
                        throw new TimeoutException($"the worker of host {host} stopped during the step");
                    }
                }
                var response = await request;
                logger.LogInformation("{Step} at {Host}: answered in {Ms:0} ms", step, host, (DateTime.UtcNow - started).TotalMilliseconds);
                if (response.Is(out Response<StepRefused>? refused))
                {
                    if (refused.Message.Kind == StepErrors.Cancelled)
                    {
                        throw new OperationCanceledException($"{step} at {host} stopped: the migration was cancelled", ct);
                    }
                    throw new StepFailedException($"{step} at {host} refused: {refused.Message.Reason}", refused.Message.Kind);
                }
                return response.Is(out Response<TOut>? ok) ? ok.Message : throw new StepFailedException($"{step} at {host}: unexpected response");
            }
            catch (Exception e) when (ct.IsCancellationRequested && e is not (StepFailedException or OperationCanceledException))
            {
                throw new OperationCanceledException($"{step} at {host}: cancelled ({e.Message})", e, ct);
            }
            catch (Exception e) when (e is RequestTimeoutException or RequestFaultException or TimeoutException
                || (e is OperationCanceledException && !ct.IsCancellationRequested))
            {
                last = e switch
                {
                    RequestTimeoutException => $"host {host} did not answer within {policy.Timeout.TotalSeconds:0} s (down or unreachable)",
                    RequestFaultException f => string.Join("; ", f.Fault?.Exceptions.Select(x => x.Message) ?? [f.Message]),
                    _ => e.Message,
                };
                // Only a host with no worker now is unreachable: a slow one is not placed elsewhere.
                unreachable = e is RequestTimeoutException or TimeoutException && !await workers.IsRunningAsync(host, CancellationToken.None);
                logger.LogWarning("{Step} at {Host}, attempt {Attempt} of {Max}: {Problem}", step, host, attempt, policy.MaxAttempts, last);
                if (attempt < policy.MaxAttempts)
                {
                    await Task.Delay(policy.Backoff * attempt, ct);
                }
            }
        }
        throw new StepFailedException($"{step} at {host} failed after {policy.MaxAttempts} attempts: {last}", unreachable ? StepErrors.Unreachable : null, host);
    }
}
