using System.CommandLine;
using Microsoft.Extensions.Options;
using SEmigrate.Workers.Commands;

var root = new RootCommand("SEmigrate: split migration of large-memory VMs without exposing their memory")
    .AddServicesCommand()
    .AddDoctorCommand()
    .AddGuestCommand();

try
{
    return await root.Parse(args).InvokeAsync(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
}
catch (OptionsValidationException e)
{
    await Console.Error.WriteLineAsync($"semigrate: invalid configuration: {string.Join("; ", e.Failures)}");
    return 2;
}
