using SEmigrate.Contracts;
using SEmigrate.Contracts.Audit;
using SEmigrate.Contracts.Migration;
using Temporalio.Exceptions;

namespace SEmigrate.Workflows;

/// <summary>The split migration, written once for both engines: measure the guest at the source, place
/// it, start paging at every destination (in parallel), introspect and classify at the source (a
/// running guest is paused from here), transfer to every destination (in parallel) with the hand-over
/// beside them, switch over at the main host, release the source. A failure or cancel after anything
/// started at a destination compensates: every destination releases the VM's pages, the VM keeps
/// running at the source, and the reason is recorded. Deterministic: all I/O, time and concurrency go
/// through <see cref="IMigrationSteps"/>.</summary>
public sealed class MigrationProcedure(IMigrationSteps steps)
{
    private readonly List<TransferResult> transfers = [];
    private MigrationState state = MigrationState.Requested;
    private string? reason;

    public MigrationProgress Progress
    {
        get
        {
            lock (transfers)
            {
                return new(migrationId, state, [.. transfers], reason);
            }
        }
    }

    /// <summary>The operator's reason, when the engine cancels the migration on request.</summary>
    public string? CancelReason { get; set; }

    private Guid migrationId;

    public async Task<MigrationOutcome> RunAsync(MigrationRequest request, CancellationToken ct)
    {
        migrationId = request.MigrationId;
        var id = request.MigrationId;
        // Since the patch, a cancelled or failed step is undone only once it has stopped, the first failed
        // transfer stops the others, and a switch-over decides itself whether a cancel came in time.
        var stopFirst = steps.Patched(StepsStopBeforeUndo);
        await steps.RecordAsync(new MigrationRequested(id, request.Vm, request.Source, request.Main.Host,
            [.. request.SubHosts.Select(s => s.Host)], request.Mode.ToWireName(), steps.UtcNow));

        // Since the patch, a running guest runs on while it is measured and placed and paging starts:
        // only its classification, the transfers and the switch-over are inside its downtime.
        var pagingFirst = steps.Patched(PagingBeforePause);
        // Before anything moves, a failure is a refusal: nothing to undo.
        IntrospectionResult? guest = null;
        GuestLayout layout;
        PlacementPlan plan;
        try
        {
            if (pagingFirst)
            {
                layout = await steps.MeasureAsync(request.Source, new MeasureGuest(id, request.Vm, request.Guest, request), ct);
            }
            else
            {
                guest = await IntrospectAsync(request, ct);
                layout = new GuestLayout(guest.PfnLimit, guest.ChunkPages, guest.ChunkGuestPages, guest.HandOverPages);
            }
            plan = Placement.Plan(layout.ChunkGuestPages, layout.ChunkPages, request.Main, request.SubHosts);
            state = MigrationState.Placed;
            await steps.RecordAsync(new PagesPlaced(id, plan.Assignments, steps.UtcNow));
        }
        catch (Exception e) when (e is not OperationCanceledException || ct.IsCancellationRequested)
        {
            return await RefuseAsync(request, Reason(e), UnreachableDestination(request, e));
        }

        var destinations = plan.Assignments.Select(a => a.Host).Distinct(StringComparer.Ordinal).ToList();
        if (!destinations.Contains(request.Main.Host, StringComparer.Ordinal))
        {
            destinations.Insert(0, request.Main.Host); // the VM core goes there even if no page does
        }
        try
        {
            // The main host also keeps what the hand-over brings: it must have room for it too. Which
            // pages travel is known only once the guest is classified; until then a destination
            // prepares room for its whole share.
            long HandedOverTo(string host) => host == request.Main.Host ? layout.HandOverPages : 0;
            long Share(string host) => plan.Assignments.Where(a => a.Host == host).Sum(a => a.Pages);
            long ArrivingAt(string host) => guest is null ? Share(host) : plan.Assignments.Where(a => a.Host == host).Sum(a => Arriving(guest, a));
            var starts = destinations.ToDictionary(host => host,
                host => new StartPaging(id, request.Vm, host, request.Mode, Share(host) + HandedOverTo(host), ArrivingAt(host) + HandedOverTo(host), Request: request,
                    Measured: layout.Vouches?.GetValueOrDefault(host)),
                StringComparer.Ordinal);
            var started = await steps.WhenAllAsync(destinations.Select(host => steps.StartPagingAsync(host, starts[host], ct)));
            var keys = started.ToDictionary(s => s.Host, StringComparer.Ordinal);
            state = MigrationState.PagingStarted;
            await steps.RecordAsync(new PagingServersStarted(id, destinations, steps.UtcNow));
            if (guest is null)
            {
                guest = await IntrospectAsync(request, ct); // a running guest is paused from here on
                if (!guest.ChunkGuestPages.SequenceEqual(layout.ChunkGuestPages))
                {
                    throw new InvalidOperationException("the guest's memory layout changed between its measure and its introspection");
                }
            }

            state = MigrationState.Transferring;
            var mainKey = keys[request.Main.Host].HostKey ?? throw new InvalidOperationException($"main host {request.Main.Host} sent no public key");
            Task<HandedOver> HandOverAsync() => steps.HandOverAsync(request.Source, new HandOver(id, request.Vm, request.Main.Host, mainKey, request, keys[request.Main.Host].ForSource), ct);
            // The hand-over needs only the paused guest and the main host's key, so it runs beside the
            // transfers: it is inside a running guest's downtime. Histories from before ran it after them.
            var besideTransfers = pagingFirst || steps.Patched(HandOverBesideTransfers);
            // The transfers' own cancel: the migration's, or the first transfer that failed for good.
            using var siblings = CancellationTokenSource.CreateLinkedTokenSource(ct);
            Exception? firstFailure = null;
            async Task<TransferResult> TransferOrStopOthersAsync(Assignment a)
            {
                try
                {
                    return await TransferAsync(request, a, keys[a.Host], starts[a.Host], stopFirst ? siblings.Token : ct);
                }
                catch (Exception e) when (stopFirst)
                {
                    // A transfer stopped by a cancel was stopped by the failure or the cancel before it
                    // (a replay of the embedded engine's journal may meet it first).
                    if (!Cancelled(e) && !siblings.IsCancellationRequested)
                    {
                        firstFailure = e;
                        siblings.Cancel();
                    }
                    throw;
                }
            }
            var transferred = steps.WhenAllAsync(plan.Assignments.Select(TransferOrStopOthersAsync));
            var handOver = besideTransfers ? HandOverAsync() : null;
            try
            {
                await transferred;
            }
            catch (Exception e)
            {
                if (handOver is not null)
                {
                    await SettledAsync(handOver); // nothing may still be storing at the main host while it releases
                }
                // The failure that stopped the others is the reason, not their being stopped.
                if (firstFailure is not null && firstFailure != e)
                {
                    System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(firstFailure);
                }
                throw;
            }
            var handedOver = await (handOver ?? HandOverAsync());
            // A cancel reaches the switch-over, which stops if the main host has not taken the VM yet and
            // else finishes: past that point a cancel undoes nothing.
            var switched = await steps.SwitchOverAsync(request.Main.Host,
                new SwitchOver(id, request.Vm, request.Main.Host, request.Mode, handedOver.WrappedKey, plan, request.Guest, request,
                    [.. keys.Values.Where(k => k.Capability is not null).Select(k => new HostCapability(k.Host, k.Capability!))], handedOver.Epoch ?? 0, handedOver.ManifestDigest), ct);
            state = MigrationState.SwitchedOver;
            await steps.RecordAsync(new MigrationSwitchedOver(id, request.Main.Host, switched.LocalPages, switched.RemotePages, steps.UtcNow,
                handedOver.ManifestDigest, switched.ManifestDigest, handedOver.Epoch));
            var released = await LetSourceGoAsync(request, switched.Receipt);
            var late = stopFirst && ct.IsCancellationRequested
                ? $"the cancel ({CancelReason ?? "requested"}) came after the main host had taken the VM over: nothing was undone"
                : null;
            reason = string.Join("; ", new[] { late, released }.OfType<string>()) is { Length: > 0 } both ? both : null;
            return new MigrationOutcome(id, state, reason, guest.Pages, Transfers(), plan, switched, handedOver.ManifestBytes, guest.PausedAt);
        }
        catch (Exception e) when (state != MigrationState.SwitchedOver)
        {
            return await CompensateAsync(request, destinations, guest?.Pages, plan, ct.IsCancellationRequested ? $"cancelled: {CancelReason ?? Reason(e)}" : Reason(e),
                ct.IsCancellationRequested ? null : UnreachableDestination(request, e));
        }
    }

    /// <summary>Introspects and classifies the guest at the source (a running guest is paused for it
    /// and stays paused) and records what it found.</summary>
    private async Task<IntrospectionResult> IntrospectAsync(MigrationRequest request, CancellationToken ct)
    {
        var id = request.MigrationId;
        var guest = await steps.IntrospectAsync(request.Source, new IntrospectGuest(id, request.Vm, request.Guest, request.Mode, request.PlainProcesses, request), ct);
        state = MigrationState.Introspected;
        await steps.RecordAsync(new GuestIntrospected(id, guest.Tasks, guest.Processes, guest.Diagnostics, steps.UtcNow));
        await steps.RecordAsync(new PagesClassified(id, guest.Pages.Zero, guest.Pages.Plain, guest.Pages.Sealed, steps.UtcNow));
        return guest;
    }

    /// <summary>Temporal patch id: the guest is measured and placed, and paging starts, before it is
    /// paused for its introspection (which came first before); it implies <see cref="HandOverBesideTransfers"/>.</summary>
    public const string PagingBeforePause = "paging-before-pause";

    /// <summary>Temporal patch id: a cancelled or failed step is waited for until it has stopped before
    /// anything is undone (activities are cancelled with WaitCancellationCompleted), the first transfer
    /// that fails for good cancels the others, and audit events are recorded whatever was cancelled.</summary>
    public const string StepsStopBeforeUndo = "steps-stop-before-undo";

    /// <summary>Temporal patch id: the hand-over runs beside the transfers, not after them.</summary>
    public const string HandOverBesideTransfers = "hand-over-beside-transfers";

    private static async Task SettledAsync(Task step)
    {
        try
        {
            await step;
        }
#pragma warning disable CA1031 // its outcome does not matter: the migration is being undone for another reason
        catch (Exception)
#pragma warning restore CA1031
        {
        }
    }

    /// <summary>Pages of an assignment that travel with bytes (assignments are whole chunks).</summary>
    private static long Arriving(IntrospectionResult guest, Assignment a) =>
        guest.ChunkSentPages.Skip((int)(a.FirstPfn / guest.ChunkPages)).Take((int)((a.EndPfn - a.FirstPfn) / guest.ChunkPages)).Sum(c => (long)c);

    /// <summary>How many times in all a sub-host's share may be sent because the host lost it.</summary>
    public const int MaxRounds = 3;

    /// <summary>Sends an assignment. A sub-host that lost the VM meanwhile (its memory server restarted)
    /// serves it again and gets its share again: all of it if it kept nothing, else what it had not
    /// acknowledged; the main host's loss undoes the migration (the hand-over went there too).</summary>
    private async Task<TransferResult> TransferAsync(MigrationRequest request, Assignment a, PagingStarted started, StartPaging start, CancellationToken ct)
    {
        // Only the baseline's sub-hosts get a channel key; the main host gets the data key at hand-over.
        byte[]? ChannelKeyFor(PagingStarted s) => request.Mode == MigrationMode.AllEnc && a.Host != request.Main.Host ? s.ServerKey : null;
        var transfer = new TransferPages(request.MigrationId, request.Vm, request.Mode, a, a.FirstPfn, 1, ChannelKeyFor(started), Request: request,
            Capability: started.ForSource);
        TransferResult result;
        while (true)
        {
            try
            {
                result = await steps.TransferAsync(request.Source, transfer, ct);
                break;
            }
            catch (Exception e) when (Lost(e) && a.Host != request.Main.Host && transfer.Round < MaxRounds && !ct.IsCancellationRequested)
            {
                var round = transfer.Round + 1;
                await steps.RecordAsync(new DestinationLost(request.MigrationId, a.Host, round, Reason(e), steps.UtcNow));
                var again = await steps.StartPagingAsync(a.Host, start with { Round = round }, ct);
                transfer = transfer with { Round = round, StartOver = again.HeldPages == 0, ChannelKeyFor = ChannelKeyFor(again) };
            }
        }
        lock (transfers)
        {
            // The embedded engine finishes transfers on several threads at once.
            transfers.Add(result);
        }
        await steps.RecordAsync(new DestinationTransferred(request.MigrationId, result.Host, result.Pages, result.Bytes, result.ResentPages, result.ResentBytes, result.Attempts, steps.UtcNow,
            result.Classified, result.Sent, result.Epochs));
        return result;
    }

    /// <summary>After switch-over nothing is undone: a source that cannot drop its copy of the key is
    /// reported (the outcome's reason) for the operator, not compensated.</summary>
    private async Task<string?> LetSourceGoAsync(MigrationRequest request, string? receipt)
    {
        try
        {
            await steps.ReleaseSourceAsync(request.Source, new ReleaseSource(request.MigrationId, request.Vm, VmLeft: true, request, receipt), CancellationToken.None);
            return null;
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            return reason = $"switched over, but the source {request.Source} could not drop the migration's key: {Reason(e)}";
        }
    }

    private async Task<MigrationOutcome> RefuseAsync(MigrationRequest request, string why, string? unreachable)
    {
        (state, reason) = (MigrationState.Refused, why);
        await steps.RecordAsync(new MigrationRefused(request.MigrationId, why, steps.UtcNow));
        return new MigrationOutcome(request.MigrationId, state, why, null, [], null, null, Unreachable: unreachable);
    }

    private IReadOnlyList<TransferResult> Transfers()
    {
        lock (transfers)
        {
            return [.. transfers];
        }
    }

    /// <summary>Undo at every destination, whether or not it got as far as starting: release is
    /// idempotent, and a host that cannot be reached is named in the reason.</summary>
    private async Task<MigrationOutcome> CompensateAsync(MigrationRequest request, IReadOnlyList<string> destinations, PageCounts? pages, PlacementPlan plan, string why,
        string? unreachable)
    {
        var released = new List<string>();
        var unreleased = new List<string>();
        var results = await steps.WhenAllAsync(destinations.Select(async host =>
        {
            try
            {
                return (host, ok: true, (await steps.ReleasePagingAsync(host, new ReleasePaging(request.MigrationId, request.Vm, host, request), CancellationToken.None)).Declined);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                return (host, ok: false, (string?)null);
            }
        }));
        foreach (var (host, ok, _) in results)
        {
            (ok ? released : unreleased).Add(host);
        }
        // The main host's word that it declined the VM: without it, a source that handed the key over keeps
        // the guest paused rather than run it beside a copy that may run at the main host.
        var declined = results.FirstOrDefault(r => r.host == request.Main.Host).Item3;
        try
        {
            await steps.ReleaseSourceAsync(request.Source, new ReleaseSource(request.MigrationId, request.Vm, VmLeft: false, request, declined), CancellationToken.None);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            why += $"; the source could not drop the migration's key ({Reason(e)})";
        }
        if (unreleased.Count > 0)
        {
            why += $"; not released (unreachable): {string.Join(", ", unreleased)}";
        }
        (state, reason) = (MigrationState.Compensated, why);
        await steps.RecordAsync(new MigrationCompensated(request.MigrationId, why, released, steps.UtcNow));
        return new MigrationOutcome(request.MigrationId, state, why, pages, Transfers(), plan, null, Unreachable: unreachable);
    }

    /// <summary>Whether a step ended because it was cancelled, on either engine.</summary>
    private static bool Cancelled(Exception e)
    {
        for (Exception? x = e; x is not null; x = x.InnerException)
        {
            if (x is OperationCanceledException or CanceledFailureException or StepFailedException { Kind: StepErrors.Cancelled })
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>Whether a step failed because its destination no longer holds the VM, on either engine.</summary>
    private static bool Lost(Exception e)
    {
        for (Exception? x = e; x is not null; x = x.InnerException)
        {
            if (x is ApplicationFailureException { ErrorType: StepErrors.DestinationLost } or StepFailedException { Kind: StepErrors.DestinationLost })
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>The destination whose worker could not be reached when that is why the migration failed
    /// (never the source: without it the guest goes nowhere).</summary>
    private static string? UnreachableDestination(MigrationRequest request, Exception e)
    {
        for (Exception? x = e; x is not null; x = x.InnerException)
        {
            if (x is StepFailedException { Kind: StepErrors.Unreachable, Host: { } host } && host != request.Source)
            {
                return host;
            }
        }
        return null;
    }

    /// <summary>The innermost message: engines wrap a step's failure (Temporal: activity failure,
    /// then application failure) and the cause is what an operator needs.</summary>
    private static string Reason(Exception e)
    {
        while (e.InnerException is not null)
        {
            e = e.InnerException;
        }
        return e.Message;
    }
}
