using MassTransit;
using Microsoft.Extensions.Hosting;
using SEmigrate.Activities;
using SEmigrate.Contracts.Audit;

namespace SEmigrate.Workers.Roles;

/// <summary>The main host's paging report: every few seconds, for each running VM, what its pager paged
/// in and out per host, page-in latency and the guest's resident memory, as one VmPaged event. Off the
/// page path: the pager only counts.</summary>
public sealed class PagingReporter(MainHostVms vms, HostContext host, IBus bus, AuditRoute audit) : BackgroundService
{
    public static readonly TimeSpan Every = TimeSpan.FromSeconds(2);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var from = DateTimeOffset.UtcNow;
        var traffic = new Dictionary<Guid, (long Read, long Written)>();
        using var timer = new PeriodicTimer(Every);
        while (await timer.WaitForNextTickAsync(stoppingToken))
        {
            var at = DateTimeOffset.UtcNow;
            foreach (var vm in vms.All.Where(v => v.Memory is not null))
            {
                var (hosts, p50, p99) = vm.Pager.TakeReport();
                var peak = vm.Memory!.PeakResidentPages;
                var now = vm.Ram!.Traffic;
                var before = traffic.GetValueOrDefault(vm.Vm);
                traffic[vm.Vm] = now;
                // To the VM's own stream, so to the VM's audit queue.
                var send = await bus.GetSendEndpoint(audit.AddressOf(vm.Vm));
                await send.Send(new VmPaged(vm.MigrationId, vm.Vm, host.Host, hosts, p50, p99, vm.Memory.ResidentPages, peak, vm.Memory.BudgetPages,
                    now.Read - before.Read, now.Written - before.Written, from, at), stoppingToken);
            }
            from = at;
        }
    }
}
