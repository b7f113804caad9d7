using MassTransit;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using SEmigrate.Activities;
using SEmigrate.Contracts.Audit;
using SEmigrate.Guest.Qemu;
using SEmigrate.MemoryServer.Store;
using SEmigrate.Workers.Settings;

namespace SEmigrate.Workers.Roles;

/// <summary>The roles a host worker runs.</summary>
public sealed record HostRoles(IReadOnlyList<string> Roles);

/// <summary>Reports this host to the fleet inventory at start and every Fleet:ReportSeconds (HostSeen, to
/// the host's stream through the auditor): what it is and what runs on it. A report that cannot be
/// sent is logged and the next one goes as planned.</summary>
public sealed class HostReporter(IServiceProvider services, HostContext host, HostRoles roles, IBus bus, AuditRoute audit, IOptions<FleetOptions> options,
    ILogger<HostReporter> logger) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(TimeSpan.FromSeconds(options.Value.ReportSeconds));
        do
        {
            try
            {
                var send = await bus.GetSendEndpoint(audit.AddressOf(HostStreams.Of(host.Host)));
                await send.Send(Report(), stoppingToken);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                logger.LogWarning("host {Host}: the fleet report was not sent: {Problem}", host.Host, e.Message);
            }
        }
        while (await timer.WaitForNextTickAsync(stoppingToken));
    }

    private HostSeen Report()
    {
        var store = services.GetService<IPageStore>();
        var vms = services.GetService<MainHostVms>()?.All
            .Select(v => new VmSeen(v.Vm, v.MigrationId, v.SwitchedOver.LocalPages, v.SwitchedOver.RemotePages, v.Guest is not null, v.GuestName)).ToList() ?? [];
        return new HostSeen(host.Host, roles.Roles, store?.CapacityPages ?? 0, store?.UsedPages ?? 0, roles.Roles.Contains("source") ? Guests() : [], vms,
            DateTimeOffset.UtcNow, services.GetService<MemoryServerWorker>()?.Refusals);
    }

    /// <summary>The source's guests that can move: running ones and memory dumps (not a guest that left or
    /// was stopped: it keeps its folder).</summary>
    private List<GuestSeen> Guests()
    {
        var folder = new DirectoryInfo(host.GuestsDirectory ?? Path.Combine(host.StateDirectory, "guests"));
        return !folder.Exists ? [] : [.. folder.GetDirectories()
            .Where(d => LiveGuest.IsLive(d.FullName) ? LiveGuest.IsRunning(d.FullName) : File.Exists(BootedGuest.DumpIn(d.FullName)))
            .OrderBy(d => d.Name, StringComparer.Ordinal)
            .Select(d => LiveGuest.IsLive(d.FullName)
                ? new GuestSeen(d.Name, LiveGuest.MemoryMiBIn(d.FullName) * 256L, true,
                    SourceActivities.HandOverPages(d.FullName, (ulong)LiveGuest.MemoryMiBIn(d.FullName) * 256 * 2)) // its PFNs may reach past its pages (the PCI hole)
                : new GuestSeen(d.Name, (new FileInfo(BootedGuest.DumpIn(d.FullName)).Length + 4095) / 4096, false))]; // a dump: a little more than its pages
    }
}
