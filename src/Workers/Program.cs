using System.CommandLine;
using Microsoft.Extensions.Options;
using SEmigrate.Workers.Commands;

SEmigrate.Guest.PrivateByDefault.Apply(); // guest RAM and everything else made here: root's alone

var root = new RootCommand("SEmigrate: split migration of large-memory VMs without exposing their memory")
    .AddServicesCommand()
    .AddDoctorCommand()
    .AddGuestCommand()
    .AddBenchCommand()
    .AddWorkerCommand()
    .AddMigrateCommand()
    .AddStatusCommand()
    .AddFleetCommand()
    .AddAuditCommand()
    .AddVmCommand()
    .AddMaintenanceCommand()
    .AddTemporalCommand()
    .AddTrustCommands()
    .AddDemoCommand();

try
{
    var parsed = root.Parse(args);
    return await parsed.InvokeAsync(new InvocationConfiguration
    {
        EnableDefaultExceptionHandler = false,
        // migrate answers Ctrl+C itself (cancel, or detach): it must never be cut short mid-compensation.
        ProcessTerminationTimeout = parsed.CommandResult.Command.Name == MigrateCommand.Name ? null : TimeSpan.FromSeconds(2),
    });
}
catch (OptionsValidationException e)
{
    await Console.Error.WriteLineAsync($"semigrate: invalid configuration: {string.Join("; ", e.Failures)}");
    return 2;
}
catch (OperationCanceledException)
{
    await Console.Error.WriteLineAsync("semigrate: cancelled");
    return 130;
}
#pragma warning disable CA1031 // the last line of defence: one clear line, never a stack trace
catch (Exception e)
#pragma warning restore CA1031
{
    await Console.Error.WriteLineAsync($"semigrate: {e.GetType().Name}: {e.Message}");
    for (var cause = e.InnerException; cause is not null; cause = cause.InnerException)
    {
        await Console.Error.WriteLineAsync($"semigrate:   because {cause.GetType().Name}: {cause.Message}"); // the cause is often the one to act on
    }
    return 1;
}
