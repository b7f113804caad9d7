using SEmigrate.Contracts;
using SEmigrate.Contracts.Migration;
using SEmigrate.Contracts.Paging;
using SEmigrate.MemoryServer;
using SEmigrate.MemoryServer.Client;
using SEmigrate.Sealing;
using Temporalio.Activities;
using Temporalio.Exceptions;

namespace SEmigrate.Activities;

/// <summary>A destination's steps (main host or sub-host): serve a VM's pages on this host's memory
/// server, and release them. The main host also hands out its public key here, for the data key.</summary>
public sealed class PagingActivities(HostContext host, PageClient client, StepGuard guard, VmCapabilities capabilities, HostKeyPair? mainHostKeys = null,
    TakeOvers? takeOvers = null)
{
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
            return new PagingReleased(host.Host, await client.ReleaseAsync(host.Host, input.Vm, capabilities.For(input.MigrationId, input.Vm), StepToken.Current), declined);
        }
        catch (PageProtocolException e) when (e.Code == PageError.UnknownVm)
        {
            return new PagingReleased(host.Host, 0, declined);
        }
        catch (PageProtocolException e) when (e.Code == PageError.Forbidden)
        {
            throw new ApplicationFailureException($"host {host.Host} serves VM {input.Vm} for another migration: {e.Message}", nonRetryable: true);
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
