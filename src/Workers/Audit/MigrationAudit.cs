using JasperFx.Events;
using Marten;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Audit;
using SEmigrate.Contracts.Migration;
using SEmigrate.Workers.Embedded;
using SEmigrate.Workflows;
using Temporalio.Common;

namespace SEmigrate.Workers.Audit;

/// <summary>One invariant's verdict.</summary>
public sealed record AuditVerdict(string Invariant, bool Ok, string Detail);

/// <summary>What `semigrate audit` found: a verdict per invariant, and the security events recorded.</summary>
public sealed record AuditReport(Guid MigrationId, MigrationState State, IReadOnlyList<AuditVerdict> Verdicts, int SecurityEvents)
{
    public bool Ok => Verdicts.All(v => v.Ok);

    /// <summary>The invariants that do not hold, in one line; null when all do.</summary>
    public string? Failures => Ok ? null : string.Join("; ", Verdicts.Where(v => !v.Ok).Select(v => $"{v.Invariant}: {v.Detail}"));
}

/// <summary>Audits a migration from its stream alone: the hash chain holds; today's procedure, replayed
/// against the recorded step results, records the same lifecycle and ends the same way; every guest
/// page was classified and placed once; every destination acknowledged the pages placed there; and
/// the end is what the events say (switched over: the source let go of the key; undone: every
/// destination released the VM and the source kept it).</summary>
public static class MigrationAudit
{
    public static async Task<AuditReport?> RunAsync(IDocumentStore store, AuditSeal seal, Guid migrationId, CancellationToken ct)
    {
        await using var query = store.QuerySession();
        var stream = await query.Events.FetchStreamAsync(migrationId, token: ct);
        if (stream.Count == 0)
        {
            // Unknown here, unless an auditor here appended to it: then its events were deleted.
            return seal.HeadOf(migrationId) is { } head
                ? new AuditReport(migrationId, MigrationState.Requested,
                    [new("anchor", false, $"the auditor appended {head.Version} events to this stream, the database holds none: the stream was deleted")], 0)
                : null;
        }
        return await CheckAsync(migrationId, stream, seal);
    }

    public static async Task<AuditReport> CheckAsync(Guid migrationId, IReadOnlyList<IEvent> stream, AuditSeal seal)
    {
        var events = stream.OrderBy(e => e.Version).Select(e => e.Data).ToList();
        var state = StateOf(events);
        var verdicts = new List<AuditVerdict>
        {
            AuditChain.Verify(stream, seal) is { } broken
                ? new("hash chain", false, $"event {broken.Version} ({broken.Type}): {broken.Problem}")
                : new("hash chain", true, $"{stream.Count} events linked{(seal.CanCheck ? ", each sealed by a trusted auditor" : "")}"),
            Anchored(migrationId, stream, seal),
            await ReplayAsync(migrationId, events, state),
        };
        verdicts.AddRange(Invariants(events, state));
        return new AuditReport(migrationId, state, verdicts, events.OfType<ISecurityEvent>().Count());
    }

    /// <summary>The trail against what is kept outside the database: seals checkable here, and the last event
    /// an auditor here appended still there, as it was.</summary>
    public static AuditVerdict Anchored(Guid migrationId, IReadOnlyList<IEvent> stream, AuditSeal seal)
    {
        const string name = "anchor";
        if (!seal.CanCheck)
        {
            return new(name, false, "no auditor key here to check the seals with (Audit:KeyFile, Audit:TrustedKeys): the database's owner could have rewritten the stream");
        }
        var last = stream.Max(e => e.Version);
        if (seal.HeadOf(migrationId) is not { } head)
        {
            return new(name, true, $"seals checked; no auditor here appended to this stream, so a stream cut short shows only where one did (Audit:HeadsFolder)");
        }
        if (last < head.Version)
        {
            return new(name, false, $"the auditor appended event {head.Version}, the database holds {last}: the stream was cut short or rolled back");
        }
        return stream.FirstOrDefault(e => e.Version == head.Version) is { } kept && AuditChain.Header(kept, AuditChain.HashHeader) == head.Hash
            ? new(name, true, $"seals checked; the last event the auditor here appended ({head.Version}) is there as it was")
            : new(name, false, $"event {head.Version} is not the one the auditor appended (the stream was replaced)");
    }

    /// <summary>Audits a Temporal history of the SplitMigration workflow (as `temporal workflow show --output
    /// json` exports it): replayed against today's workflow code, and the same invariants on the events
    /// its RecordEvent activities carried (its integrity is the Temporal server's: no chain to check).</summary>
    public static async Task<AuditReport> CheckHistoryAsync(WorkflowHistory history, CancellationToken ct)
    {
        var events = new List<object>(MigrationHistory.RecordedEvents(history));
        // The steps the end is judged by, named as the embedded engine's journal names them.
        events.AddRange(MigrationHistory.Completed<SwitchOver>(history, nameof(SwitchOver)).Select(s => Done(s.MigrationId, StepKeys.SwitchOver)));
        events.AddRange(MigrationHistory.Completed<ReleasePaging>(history, nameof(ReleasePaging)).Select(r => Done(r.MigrationId, StepKeys.ReleasePaging(r.Host))));
        events.AddRange(MigrationHistory.Completed<ReleaseSource>(history, nameof(ReleaseSource)).Select(r => Done(r.MigrationId, StepKeys.ReleaseSource(r.VmLeft))));
        var state = StateOf(events);
        var diverged = await MigrationHistory.ReplayAsync(history, ct);
        var replay = diverged is null
            ? new AuditVerdict("replay", true, $"today's workflow code makes the commands of its {history.Events.Count} events and ends {state}")
            : new AuditVerdict("replay", false, $"nondeterminism: {diverged}");
        var id = events.OfType<IMigrationEvent>().FirstOrDefault()?.MigrationId ?? Guid.Empty;
        return new AuditReport(id, state, [replay, .. Invariants(events, state)], events.OfType<ISecurityEvent>().Count());

        static StepCompleted Done(Guid migrationId, string step) => new(migrationId, step, "", DateTimeOffset.UnixEpoch);
    }

    /// <summary>Where the events say the migration is.</summary>
    public static MigrationState StateOf(IReadOnlyList<object> events)
    {
        var state = MigrationState.Requested;
        foreach (var e in events.OfType<IMigrationEvent>())
        {
            state = MigrationStates.After(e, state) ?? state;
        }
        return state;
    }

    /// <summary>What the events must say of every migration, whoever drove it.</summary>
    public static IReadOnlyList<AuditVerdict> Invariants(IReadOnlyList<object> events, MigrationState state) =>
        [Placed(events), Acknowledged(events, state), NoneInTheClear(events), Manifest(events, state), Epochs(events), Ended(events, state)];

    /// <summary>Today's procedure against the recorded results (a cancel recorded is a cancel replayed).</summary>
    public static async Task<AuditVerdict> ReplayAsync(Guid migrationId, IReadOnlyList<object> events, MigrationState recordedState)
    {
        const string name = "replay";
        if (events.OfType<MigrationAccepted>().FirstOrDefault() is not { } accepted)
        {
            return new(name, false, "the stream holds no request the embedded engine accepted (recorded by Temporal, or before the engine kept a journal): nothing to replay");
        }
        if (recordedState is not (MigrationState.SwitchedOver or MigrationState.Compensated or MigrationState.Refused))
        {
            return new(name, false, $"the migration has not ended ({recordedState})");
        }
        var steps = new ReplaySteps(migrationId, events);
        var procedure = new MigrationProcedure(steps);
        using var cancel = new CancellationTokenSource();
        if (events.OfType<CancelRequested>().FirstOrDefault() is { } cancelled)
        {
            procedure.CancelReason = cancelled.Reason;
            await cancel.CancelAsync();
        }
        MigrationOutcome outcome;
        try
        {
            outcome = await procedure.RunAsync(accepted.Request, cancel.Token);
        }
#pragma warning disable CA1031 // a stream that breaks the replay (a result that does not parse, say) is a finding, not a crash
        catch (Exception e)
#pragma warning restore CA1031
        {
            return new(name, false, $"the replay broke off: {e.Message}");
        }
        var findings = steps.Findings.Concat(steps.Unreplayed).ToList();
        if (outcome.State != recordedState)
        {
            findings.Add($"the replay ends {outcome.State}, the migration {recordedState}");
        }
        return findings.Count == 0
            ? new(name, true, $"today's procedure makes the same {events.OfType<StepCompleted>().Count()} steps and ends {outcome.State}")
            : new(name, false, $"nondeterminism: {string.Join("; ", findings)}");
    }

    private static AuditVerdict Placed(IReadOnlyList<object> events)
    {
        const string name = "every page classified and placed once";
        var placed = events.OfType<PagesPlaced>().ToList();
        var classified = events.OfType<PagesClassified>().ToList();
        if (placed.Count == 0)
        {
            return new(name, true, "nothing was placed (refused before anything moved)");
        }
        if (placed.Count > 1 || classified.Count > 1)
        {
            return new(name, false, $"placed {placed.Count} times, classified {classified.Count} times");
        }
        long next = -1, pages = 0;
        foreach (var a in placed[0].Assignments.OrderBy(a => a.FirstPfn))
        {
            if (next >= 0 && a.FirstPfn != next)
            {
                return new(name, false, $"{a.Host}'s range starts at page {a.FirstPfn}, the one before it ends at {next} (a gap or an overlap)");
            }
            (next, pages) = (a.EndPfn, pages + a.Pages);
        }
        if (classified.Count == 1 && classified[0] is var c && c.Zero + c.Plain + c.Sealed != pages)
        {
            return new(name, false, $"{c.Zero + c.Plain + c.Sealed} pages classified, {pages} placed");
        }
        return new(name, true, $"{pages} pages in {placed[0].Assignments.Count} contiguous ranges{(classified.Count == 1 ? ", as many as classified" : "")}");
    }

    private static AuditVerdict Acknowledged(IReadOnlyList<object> events, MigrationState state)
    {
        const string name = "pages sent = pages acknowledged, per destination";
        var placed = events.OfType<PagesPlaced>().FirstOrDefault()?.Assignments ?? []; // placed twice: the placement verdict says so
        var transferred = events.OfType<DestinationTransferred>().ToList();
        var problems = new List<string>();
        foreach (var host in placed.Select(a => a.Host).Distinct(StringComparer.Ordinal))
        {
            var wanted = placed.Where(a => a.Host == host).Sum(a => a.Pages);
            var done = transferred.Where(t => t.Host == host).ToList();
            if (done.Count == 0)
            {
                if (state == MigrationState.SwitchedOver)
                {
                    problems.Add($"{host}: switched over without its transfer recorded");
                }
            }
            else if (done.Sum(t => t.Pages) != wanted)
            {
                problems.Add($"{host}: {wanted} pages placed, {done.Sum(t => t.Pages)} acknowledged");
            }
        }
        problems.AddRange(transferred.Where(t => placed.All(a => a.Host != t.Host)).Select(t => $"{t.Host}: pages acknowledged by a host nothing was placed at"));
        return problems.Count == 0
            ? new(name, true, $"{transferred.Count} destinations, {transferred.Sum(t => t.Pages)} pages acknowledged")
            : new(name, false, string.Join("; ", problems));
    }

    /// <summary>Per destination, by the source's account: every page classified sealed travelled sealed,
    /// and only free pages stayed behind (noenc, the baseline, sends every page unencrypted by request).</summary>
    private static AuditVerdict NoneInTheClear(IReadOnlyList<object> events)
    {
        const string name = "no page classified sealed sent unsealed";
        var mode = events.OfType<MigrationRequested>().FirstOrDefault()?.Mode;
        var transferred = events.OfType<DestinationTransferred>().ToList();
        if (transferred.Count == 0)
        {
            return new(name, true, "no pages were sent");
        }
        if (transferred.FirstOrDefault(t => t.Classified is null || t.Sent is null) is { } unaccounted)
        {
            return new(name, false, $"{unaccounted.Host}: the transfer does not say how its pages travelled (recorded before it did)");
        }
        var problems = new List<string>();
        long inTheClear = 0;
        foreach (var t in transferred)
        {
            var (c, sent) = (t.Classified!, t.Sent!);
            if (c.Total != t.Pages || sent.Total != t.Pages)
            {
                problems.Add($"{t.Host}: {t.Pages} pages, {c.Total} classified, {sent.Total} sent");
            }
            if (sent.Zero > c.Zero)
            {
                problems.Add($"{t.Host}: {sent.Zero} pages stayed behind, only {c.Zero} are free");
            }
            if (sent.Sealed < c.Sealed)
            {
                inTheClear += c.Sealed - sent.Sealed;
                if (mode != MigrationMode.NoEnc.ToWireName())
                {
                    problems.Add($"{t.Host}: {c.Sealed - sent.Sealed} pages classified sealed travelled unsealed");
                }
            }
        }
        if (problems.Count > 0)
        {
            return new(name, false, string.Join("; ", problems));
        }
        var sealedSent = transferred.Sum(t => t.Sent!.Sealed);
        return new(name, true, mode == MigrationMode.NoEnc.ToWireName()
            ? $"mode noenc: {inTheClear} pages classified sealed travelled unencrypted (authenticated), as that mode asks"
            : $"{sealedSent} pages sealed, {transferred.Sum(t => t.Sent!.Plain)} as-is, {transferred.Sum(t => t.Sent!.Zero)} free ones not sent");
    }

    /// <summary>The main host opened the manifest the source sent (both say which, by its SHA-256).</summary>
    private static AuditVerdict Manifest(IReadOnlyList<object> events, MigrationState state)
    {
        const string name = "the main host opened the manifest the source sent";
        if (state != MigrationState.SwitchedOver)
        {
            return new(name, true, $"{state}: no manifest was opened");
        }
        var switched = events.OfType<MigrationSwitchedOver>().ToList();
        return switched switch
        {
            { Count: > 1 } => new(name, false, $"switched over {switched.Count} times"),
            [var one] => Opened(one),
            _ => new(name, false, "switched over, but not recorded as such"),
        };

        AuditVerdict Opened(MigrationSwitchedOver switched) => switched switch
        {
            { ManifestSent: null } or { ManifestReceived: null } => new(name, false, "the switch-over does not say which manifest was sent and opened (recorded before it did)"),
            _ when switched.ManifestSent == switched.ManifestReceived => new(name, true, $"SHA-256 {switched.ManifestSent}"),
            _ => new(name, false, $"the source sent {switched.ManifestSent}, the main host opened {switched.ManifestReceived}"),
        };
    }

    /// <summary>Every transfer attempt and the hand-over sealed under a key epoch of its own: a nonce
    /// (counter under a per-epoch subkey) never repeats under one key.</summary>
    private static AuditVerdict Epochs(IReadOnlyList<object> events)
    {
        const string name = "no key epoch used twice";
        var transferred = events.OfType<DestinationTransferred>().ToList();
        if (transferred.FirstOrDefault(t => t.Epochs is null) is { } unaccounted)
        {
            return new(name, false, $"{unaccounted.Host}: the transfer does not say which key epochs it used (recorded before it did)");
        }
        var used = transferred.SelectMany(t => t.Epochs!.Select(e => (Epoch: e, By: $"the transfer to {t.Host}"))).ToList();
        var switched = events.OfType<MigrationSwitchedOver>().FirstOrDefault();
        if (switched is not null)
        {
            if (switched.ManifestEpoch is not { } manifest)
            {
                return new(name, false, "the switch-over does not say which key epoch the manifest used (recorded before it did)");
            }
            used.Add((manifest, "the manifest"));
        }
        var twice = used.GroupBy(u => u.Epoch).Where(g => g.Count() > 1).ToList();
        return twice.Count == 0
            ? new(name, true, used.Count == 0 ? "nothing was sealed" : $"{used.Count} epochs, each used once ({transferred.Sum(t => t.Epochs!.Count)} transfer attempts{(switched is null ? "" : " and the manifest")})")
            : new(name, false, string.Join("; ", twice.Select(g => $"epoch {g.Key} used by {string.Join(" and ", g.Select(u => u.By))}")));
    }

    private static AuditVerdict Ended(IReadOnlyList<object> events, MigrationState state)
    {
        const string name = "the end matches the events";
        var done = events.OfType<StepCompleted>().Select(s => s.Step).ToHashSet(StringComparer.Ordinal);
        var destinations = events.OfType<PagingServersStarted>().SelectMany(p => p.Hosts).Distinct(StringComparer.Ordinal).ToList();
        var problems = new List<string>();
        switch (state)
        {
            case MigrationState.SwitchedOver when !done.Contains(StepKeys.ReleaseSource(vmLeft: true)):
                problems.Add("switched over, but the source never let go of the key");
                break;
            case MigrationState.Compensated:
                problems.AddRange(destinations.Where(h => !done.Contains(StepKeys.ReleasePaging(h)) && !Unreachable(events, h)).Select(h => $"undone, but {h} never released the VM"));
                if (!done.Contains(StepKeys.ReleaseSource(vmLeft: false)))
                {
                    problems.Add("undone, but the source never let go of the key");
                }
                if (done.Contains(StepKeys.SwitchOver))
                {
                    problems.Add("undone after the main host took the VM over");
                }
                break;
            case MigrationState.Refused when destinations.Count > 0:
                problems.Add("refused after paging started");
                break;
            case not (MigrationState.SwitchedOver or MigrationState.Compensated or MigrationState.Refused):
                problems.Add($"the migration has not ended ({state})");
                break;
        }
        return problems.Count == 0 ? new(name, true, state.ToString()) : new(name, false, string.Join("; ", problems));
    }

    /// <summary>The compensation named the host as one it could not reach: the operator was told.</summary>
    private static bool Unreachable(IReadOnlyList<object> events, string host) =>
        events.OfType<MigrationCompensated>().Any(c => c.Reason.Contains("not released (unreachable): ", StringComparison.Ordinal) && c.Reason.Contains(host, StringComparison.Ordinal));
}
