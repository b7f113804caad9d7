using System.Security.Cryptography;
using SEmigrate.Contracts;
using SEmigrate.Contracts.Migration;
using SEmigrate.Contracts.Paging;
using SEmigrate.MemoryServer;
using SEmigrate.MemoryServer.Client;
using SEmigrate.MemoryServer.Store;
using SEmigrate.Sealing;
using Temporalio.Activities;
using Temporalio.Exceptions;

namespace SEmigrate.Activities;

/// <summary>A destination's steps (main host or sub-host): serve a VM's pages on this host's memory
/// server, and release them. The main host also hands out its public key here, for the data key.</summary>
public sealed class PagingActivities(HostContext host, PageClient client, IPageStore store, StepGuard guard, VmCapabilities capabilities, HostKeyPair keys, bool isMain,
    TakeOvers? takeOvers = null)
{
    /// <summary>This host's key pair when it is a main host: handed out at StartPaging, for the data key.</summary>
    private readonly HostKeyPair? mainHostKeys = isMain ? keys : null;

    [Activity("StartPaging")]
    public async Task<PagingStarted> StartPagingAsync(StartPaging input)
    {
        CheckHost(input.Host);
        var request = await guard.AllowAsync(nameof(StartPaging), input.MigrationId, input.Vm, input.Request);
        if (!StepGuard.IsDestination(request, host.Host) || request.Mode != input.Mode)
        {
            throw await guard.RefuseAsync(nameof(StartPaging), input.MigrationId, input.Vm,
                $"the request sends pages in {request.Mode} to {string.Join(", ", request.SubHosts.Prepend(request.Main).Select(d => d.Host))}, not in {input.Mode} to {host.Host}");
        }
        // Only the source (to send the VM's pages) and the main host (to page, and release the VM here) get
        // the capability, each wrapped for the key the operator pinned for it.
        var mainKey = StepGuard.PinnedKey(request, request.Main.Host)
            ?? throw await guard.RefuseAsync(nameof(StartPaging), input.MigrationId, input.Vm, $"the request pins no key for its main host {request.Main.Host}");
        var sourceKey = StepGuard.PinnedKey(request, request.Source)
            ?? throw await guard.RefuseAsync(nameof(StartPaging), input.MigrationId, input.Vm, $"the request pins no key for its source {request.Source}");
        var capability = capabilities.For(input.MigrationId, input.Vm);
        // Placement trusted the capacity the operator gave; the memory server knows what it has left.
        var usage = await client.UsageAsync(host.Host, input.Vm, capability, StepToken.Current);
        if (request.Order is not null && MeasuredProblem(input, request) is { } unmeasured)
        {
            throw await guard.RefuseAsync(nameof(StartPaging), input.MigrationId, input.Vm, unmeasured);
        }
        var already = usage.PagesPerVm.GetValueOrDefault(input.Vm);
        if (input.ExpectedPages - already > usage.CapacityPages - usage.UsedPages)
        {
            throw new ApplicationFailureException(
                $"host {host.Host} has room for {usage.CapacityPages - usage.UsedPages} more pages; this VM's share is {input.ExpectedPages}", nonRetryable: true);
        }
        // The main host keeps its share as it arrives (it holds the data key and opens pages itself), so
        // its memory server never plays the allenc baseline's decrypt-and-re-seal.
        var serverMode = mainHostKeys is null ? input.Mode : MigrationMode.Semigrate;
        byte[] serverKey;
        try
        {
            serverKey = await client.StartVmAsync(host.Host, input.Vm, serverMode, input.ArrivingPages, capability, StepToken.Current, input.MigrationId);
        }
        catch (PageProtocolException e) when (e.Code == PageError.Forbidden)
        {
            throw new ApplicationFailureException($"host {host.Host}'s memory server refused VM {input.Vm}: {e.Message}", nonRetryable: true);
        }
        catch (PageProtocolException e) when (e.Code == PageError.Ended)
        {
            throw await guard.RefuseAsync(nameof(StartPaging), input.MigrationId, input.Vm, $"migration {input.MigrationId} already ended at {host.Host} (a replay): {e.Message}");
        }
        catch (PageProtocolException e) when (e.Code == PageError.StoreFull)
        {
            // Room reserved for other VMs' transfers counts too: asking again meets the same answer.
            throw new ApplicationFailureException($"host {host.Host} cannot take this VM's share: {e.Message}", nonRetryable: true);
        }
        return new PagingStarted(host.Host, serverKey, mainHostKeys?.PublicKey, already,
            host.Host == request.Main.Host ? null : KeyWrap.WrapSecret(capability, mainKey, VmCapabilities.WrapContext(input.Vm, host.Host, VmCapabilities.MainHolder)),
            KeyWrap.WrapSecret(capability, sourceKey, VmCapabilities.WrapContext(input.Vm, host.Host, VmCapabilities.SourceHolder)));
    }

    /// <summary>Under a drain order, which nobody signs per migration, a destination reserves room only for a
    /// migration whose source measured its guest (its word, SourceVouch, for this host), no more than it
    /// measured, and for one migration of a guest per order at a time here: the first to start paging
    /// here holds it while this host's memory server serves its VM for it. A migration made up under the
    /// order reserves nothing.</summary>
    private string? MeasuredProblem(StartPaging input, MigrationRequest request)
    {
        if (input.Measured is not { } measured)
        {
            return "under a drain order, paging starts only with the source's word that it measured the guest for this migration";
        }
        var sourceKey = StepGuard.PinnedKey(request, request.Source);
        var expected = sourceKey is null ? null : keys.Vouch(sourceKey, SourceVouch.Statement(request.MigrationId, request.Vm, request.Guest, host.Host, measured.Pages));
        byte[] shown;
        try
        {
            shown = Convert.FromHexString(measured.Mac);
        }
        catch (FormatException)
        {
            shown = [];
        }
        if (expected is null || !CryptographicOperations.FixedTimeEquals(expected, shown))
        {
            return $"the word that {request.Source} measured guest '{request.Guest}' for migration {request.MigrationId} is not its own (made up, or for another migration or host)";
        }
        if (input.ExpectedPages > measured.Pages || input.ArrivingPages > input.ExpectedPages || input.ArrivingPages < 0)
        {
            return $"room for {input.ExpectedPages} pages ({input.ArrivingPages} arriving) asked for a guest its source measured at {measured.Pages}";
        }
        return Claim(request, input.MigrationId, input.Vm);
    }

    private static readonly Lock Claiming = new();

    /// <summary>How long a claim holds before its VM is served here (paging starts right after it).</summary>
    private static readonly TimeSpan PendingClaimLasts = TimeSpan.FromMinutes(2);

    private string ClaimPath(MigrationRequest request) => Path.Combine(host.StateDirectory, "drain-claims", SourceActivities.DrainClaimName(request.Order!, request.Guest));

    /// <summary>Claims the guest under the order here for <paramref name="migrationId"/>, unless another migration
    /// holds it: its VM is served here for it, or its claim is new (its paging may be starting right now). A
    /// claim whose VM was released, stopped or never started lapses after <see cref="PendingClaimLasts"/>.</summary>
    private string? Claim(MigrationRequest request, Guid migrationId, Guid vm)
    {
        var path = ClaimPath(request);
        lock (Claiming)
        {
            var held = File.Exists(path) ? File.ReadAllText(path).Split(' ') : [];
            if (held.Length == 2 && Guid.TryParse(held[0], out var holder) && holder != migrationId && Guid.TryParse(held[1], out var holderVm)
                && (DateTime.UtcNow - File.GetLastWriteTimeUtc(path) < PendingClaimLasts
                    || store.OwnerOf(holderVm) is { } owner && owner.AsSpan().SequenceEqual(SHA256.HashData(capabilities.For(holder, holderVm)))))
            {
                return $"guest '{request.Guest}' is moving here under this drain order already, in migration {holder}: one at a time";
            }
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            if (held.Length != 2 || held[0] != migrationId.ToString())
            {
                File.WriteAllText(path + ".tmp", $"{migrationId} {vm}"); // whole or not at all
                File.Move(path + ".tmp", path, overwrite: true);
            }
            return null;
        }
    }

    /// <summary>Idempotent: a VM this host does not serve has nothing to release. The main host first declines
    /// the VM for good (and says so, to the source only), unless it took it over: then nothing is released.</summary>
    [Activity("ReleasePaging")]
    public async Task<PagingReleased> ReleasePagingAsync(ReleasePaging input)
    {
        CheckHost(input.Host);
        var request = await guard.AllowAsync(nameof(ReleasePaging), input.MigrationId, input.Vm, input.Request, expiredToo: true);
        if (!StepGuard.IsDestination(request, host.Host))
        {
            throw await guard.RefuseAsync(nameof(ReleasePaging), input.MigrationId, input.Vm, $"the request sends no pages to {host.Host}");
        }
        string? declined = null;
        if (request.Main.Host == host.Host && mainHostKeys is not null && takeOvers is not null)
        {
            if (!takeOvers.TryDecline(input.MigrationId))
            {
                throw await guard.RefuseAsync(nameof(ReleasePaging), input.MigrationId, input.Vm,
                    $"VM {input.Vm} was taken over here by migration {input.MigrationId}: it may run here, so nothing is released and it is not undone");
            }
            declined = StepGuard.PinnedKey(request, request.Source) is { } sourceKey
                ? Convert.ToHexString(mainHostKeys.Vouch(sourceKey, TakeOvers.DeclinedStatement(input.MigrationId, input.Vm, host.Host)))
                : null;
        }
        try
        {
            var released = await client.ReleaseAsync(host.Host, input.Vm, capabilities.For(input.MigrationId, input.Vm), StepToken.Current);
            Unclaim(request, input.MigrationId);
            return new PagingReleased(host.Host, released, declined);
        }
        catch (PageProtocolException e) when (e.Code == PageError.UnknownVm)
        {
            Unclaim(request, input.MigrationId);
            return new PagingReleased(host.Host, 0, declined);
        }
        catch (PageProtocolException e) when (e.Code == PageError.Forbidden)
        {
            throw new ApplicationFailureException($"host {host.Host} serves VM {input.Vm} for another migration: {e.Message}", nonRetryable: true);
        }
    }

    /// <summary>A migration released here lets the next of its guest under the order start paging here.</summary>
    private void Unclaim(MigrationRequest request, Guid migrationId)
    {
        if (request.Order is null)
        {
            return;
        }
        var path = ClaimPath(request);
        lock (Claiming)
        {
            if (File.Exists(path) && File.ReadAllText(path).Split(' ') is [var holder, _] && holder == migrationId.ToString())
            {
                File.Delete(path);
            }
        }
    }

    private void CheckHost(string wanted)
    {
        if (wanted != host.Host)
        {
            throw new ApplicationFailureException($"a step for host {wanted} reached host {host.Host}", nonRetryable: true);
        }
    }
}
